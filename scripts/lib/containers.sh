# Sourced by the image scripts: how podman and buildah are called here.
# No Docker daemon is needed: podman/buildah build and run images with the vfs
# storage driver and chroot isolation, which work inside plain VMs.
GILGAMESH_STORAGE_DRIVER="${GILGAMESH_STORAGE_DRIVER:-vfs}"
GILGAMESH_IMAGE="${GILGAMESH_IMAGE:-localhost/gilgamesh:latest}"
# No registry is reachable here: the base is made locally (scripts/image.sh) under this name.
GILGAMESH_BASE_IMAGE="${GILGAMESH_BASE_IMAGE:-localhost/debian:trixie-slim}"
PODMAN=(podman --storage-driver "$GILGAMESH_STORAGE_DRIVER")
BUILDAH=(buildah --storage-driver "$GILGAMESH_STORAGE_DRIVER")
