"""Test app: routes with path parameters, for every converter."""

import gilgamesh


def _describe(request, **kwargs):
    return {"kwargs": kwargs, "types": {k: type(v).__name__ for k, v in kwargs.items()},
            "path_params": request.path_params, "path": request.path}


@gilgamesh.route("/items/<int:item_id>")
def item(request, item_id):
    """One item by integer id."""
    return _describe(request, item_id=item_id)


@gilgamesh.route("/items/<int:item_id>", methods=("DELETE",))
def delete_item(request, item_id):
    return {"deleted": item_id}


@gilgamesh.route("/price/<float:amount>")
def price(request, amount):
    return _describe(request, amount=amount)


@gilgamesh.route("/files/<path:name>")
def files(request, name):
    return _describe(request, name=name)


@gilgamesh.route("/users/me")
def me(request):
    return {"user": "me", "static": True}


@gilgamesh.route("/users/<name>")
def user(request, name):
    return _describe(request, name=name)


@gilgamesh.route("/users/<name>", methods=("POST",))
def rename_user(request, name):
    return {"renamed": name}


@gilgamesh.route("/orders/<int:order>/lines/<int:line>")
def order_line(request, order, line):
    return _describe(request, order=order, line=line)


@gilgamesh.route("/blob/<int:size>")
def blob(request, size):
    return b"x" * size


@gilgamesh.route("/wrong-signature/<int:x>")
def wrong_signature(request):
    return {"never": True}
