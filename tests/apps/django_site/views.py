"""Views: /item/<id>/ waits 0.5 s (as a slow upstream would), then reads the item from
sqlite through Django's connection (one per thread); /hello/ answers at once; /async/ is an
async view (served with --asgi django_site.asgi:application) that awaits ?wait= seconds;
/download/ is this file as a FileResponse (Django hands it to wsgi.file_wrapper)."""

import asyncio
import os
import threading
import time

from django.db import connection
from django.http import FileResponse, Http404, HttpResponse, JsonResponse


def hello(request):
    return HttpResponse("hello from django")


def item(request, item_id):
    time.sleep(float(request.GET.get("wait", "0.5")))
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM items WHERE id = %s", [item_id])
        row = cursor.fetchone()
    if row is None:
        raise Http404("no item %d" % item_id)
    return JsonResponse({"id": item_id, "name": row[0], "thread": threading.get_ident(),
                         "pid": os.getpid(),
                         "multithread": request.META.get("wsgi.multithread")})


async def async_hello(request):
    await asyncio.sleep(float(request.GET.get("wait", "0")))
    return HttpResponse("hello from an async django view")


def download(request):
    return FileResponse(open(__file__, "rb"), content_type="text/x-python")
