// --reload, for development (uvicorn's --reload, gunicorn's --reload): this process becomes a
// supervisor that binds the listening socket once, runs the server as a child (this binary,
// the same arguments, the socket passed on as GILGAMESH_LISTEN_FD) and, when a *.py file under
// --reload-dir changes, stops that child as SIGTERM does (it drains) and starts another.
// Connections that come meanwhile wait in the socket's backlog. A server that fails to start
// (an import error) is started again at the next change. SIGTERM or SIGINT to the supervisor
// stops the child and then the supervisor, with the child's status.
#pragma once

#include "server/model/options.hpp"

namespace gilgamesh {

// Runs the supervisor until SIGTERM/SIGINT; returns the exit status.
int reload_main(const ServerConfig& config, char** argv);

}  // namespace gilgamesh
