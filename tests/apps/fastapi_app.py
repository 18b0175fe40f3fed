"""Test app: a FastAPI application (Debian trixie's python3-fastapi, pydantic 2 underneath),
for tests/container/test_image.py. `--asgi fastapi_app:app`."""

import os

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    name: str
    count: int = 1


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q, "pid": os.getpid()}


@app.post("/items")
async def create_item(item: Item):
    return {"name": item.name, "count": item.count * 2}
