"""What the tests share, each defined once.

* ``sessions.py``: the recording ``requests`` session (what was sent, with bodies and timeouts);
* ``events.py``: Pacifica ``Files`` objects and Notifications events, archived on the stack or not;
* ``tars.py``: tars of any members, in any format, and Cartd-shaped ones;
* ``child.py``: a download run in a child process and SIGKILLed mid-stream.

The one stub Cartd (stub_cartd.py: configured per test, or serving an archive as test_cli's CartdStub
sets it up), the stack (cartd_stack.py), the fault proxy (fault_proxy.py), the released programs' venv
(released_programs.py) and the small helpers (helpers.py) still live beside the tests, which import them
by name: cartd_stack.py is also run as a script, and by dev.py, the demo and the benchmarks.
"""
