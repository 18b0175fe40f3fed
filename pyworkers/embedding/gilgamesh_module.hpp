// The embedded `gilgamesh` module: multi-phase init, one instance per
// interpreter, declares per-interpreter-GIL support and Py_MOD_GIL_NOT_USED.
#pragma once

#include <Python.h>

namespace gilgamesh {

// Registers `gilgamesh` and the adapters' `_gilgamesh_wsgi` and `_gilgamesh_asgi` with
// PyImport_AppendInittab. Call before Py_Initialize.
void register_gilgamesh_module();

}  // namespace gilgamesh
