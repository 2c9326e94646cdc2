"""The child runtime: runs inside a job's interpreter, imports only stdlib, cloudpickle and msgpack.

Started as ``python -m sandvisor.sandbox_child --channel-fd N`` for one job, or as a warm template
(``--template --control-fd N``) that forks one child per job.
"""
