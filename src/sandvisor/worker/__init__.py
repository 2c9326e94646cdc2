"""The RunPod worker: runpod-python's queue loop in front of one process-wide Supervisor.

host.py     the Supervisor on a thread of its own, with its own event loop
handler.py  the handlers runpod calls; live logs batched into progress updates
serve.py    ``sandvisor serve``: runpod's loop with our handler and concurrency
scaler.py   runpod's JobScaler, taking the next job as soon as a slot frees
"""
