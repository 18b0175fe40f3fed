"""Forks while it is imported, and the child returns from the import too (no os._exit),
as a module that starts a helper with a bare os.fork() can get wrong: the copy of the
server (under processes, of the zygote) must end there instead of carrying on as a second
server or zygote. Each copy appends its pid to the file GILGAMESH_TEST_FORK_LOG names,
before it returns; where the interpreter may not fork (a sub-interpreter) nothing is
written."""
import os

import gilgamesh

try:
    _child = os.fork()
except RuntimeError:  # sub-interpreters may not fork
    _child = None
if _child == 0:
    with open(os.environ["GILGAMESH_TEST_FORK_LOG"], "a") as log:
        log.write("%d\n" % os.getpid())


@gilgamesh.route("/ok")
def ok(request):
    return {"ok": True, "pid": os.getpid()}
