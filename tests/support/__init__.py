"""What the tests share, each defined once.

* ``sessions.py``: the recording ``requests`` session (what was sent, with bodies and timeouts);
* ``events.py``: Pacifica ``Files`` objects and Notifications events, archived on the stack or not;
* ``tars.py``: tars of any members, in any format, and Cartd-shaped ones;
* ``child.py``: a download run in a child process and SIGKILLed mid-stream;
* ``processes.py``: how the tests run a child process: its environment, on a pseudo-terminal, its peak memory;
* ``service.py``: ``pacifica-downloader serve`` as a process of its own, and waiting on what can be observed.

The one stub Cartd (stub_cartd.py: configured per test, or serving an archive as test_cli's CartdStub
sets it up), the stacks (cartd_stack.py, and facility_stack.py around one), the fault proxy
(fault_proxy.py), the released programs' venv (released_programs.py) and the small helpers (helpers.py)
still live beside the tests, which import them by name: the stacks also run as scripts, and dev.py, the
demo and the benchmarks import cartd_stack.py.
"""
