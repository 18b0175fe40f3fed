"""Test app: imports one real package, named by the environment variable
GILGAMESH_TEST_PACKAGE (an entry of PACKAGES, e.g. `markupsafe`), and puts it to
a small real use. The packages are Debian trixie's, built for Python 3.13, C
extensions included (scripts/fetch-trixie-site.sh; pass the site folder with
--pythonpath); tests/blackbox/test_real_packages.py serves this app once per
package and strategy.

The package is imported when the app is, so one that cannot load refuses the
server's start-up. GET /use answers {"package": NAME, "result": ...}, a
deterministic JSON value that does not depend on whether a package's optional
C speedups loaded (its pure-Python fallback gives the same answer).
"""

import importlib
import io
import os

import gilgamesh


def _flask(m):
    app = m.Flask("real_packages_flask")

    @app.get("/item/<int:n>")
    def item(n):
        return m.jsonify(n=n, html=m.render_template_string("{{ v }}", v="<b>"))

    with app.test_client() as client:
        return client.get("/item/7").get_json()


def _requests(m):
    return m.Request("GET", "http://x/", params={"a": "b c", "n": 1}).prepare().url


def _urllib3(m):
    url = m.util.parse_url("https://user@host.example:8443/p/a?q=1#f")
    return [url.scheme, url.host, url.port, url.request_uri]


def _charset_normalizer(m):
    text = "Voilà l'été, ça déménage: naïve façade, œuvre complète."
    best = m.from_bytes(text.encode("utf-8")).best()
    return str(best) == text


def _simplejson(m):
    return m.dumps({"b": [1, 2.5, None], "a": "\u00e9"}, sort_keys=True)


def _zstandard(m):
    data = b"gilgamesh " * 500
    packed = m.ZstdCompressor(level=3).compress(data)
    return {"size": len(data), "smaller": len(packed) < len(data),
            "same": m.ZstdDecompressor().decompress(packed) == data}


def _argon2(m):
    hasher = m.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    digest = hasher.hash("secret")
    return [digest.startswith("$argon2id$v=19$m=8,t=1,p=1$"), hasher.verify(digest, "secret")]


def _cryptography(m):
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    h = hashes.Hash(hashes.SHA256())
    h.update(b"abc")
    f = Fernet(Fernet.generate_key())
    return [h.finalize().hex(), f.decrypt(f.encrypt(b"token")).decode()]


def _msgspec(m):
    return [m.json.encode({"a": [1, 2], "b": None}).decode(),
            m.json.decode(b'[1, "x"]', type=list[int | str])]


def _ujson(m):
    return m.dumps({"b": [1, 2], "a": "x"}, sort_keys=True)


def _orjson(m):
    return m.dumps({"b": [1, 2], "a": None}, option=m.OPT_SORT_KEYS).decode()


def _lxml(m):
    root = m.fromstring("<r><i n='1'>a</i><i n='2'>b</i></r>")
    return [[e.get("n") for e in root], root.xpath("string(/r/i[2])"), m.tostring(root[0]).decode()]


def _pil(m):
    image = m.new("RGB", (4, 3), (255, 0, 0))
    out = io.BytesIO()
    image.save(out, "PNG")
    again = m.open(io.BytesIO(out.getvalue()))
    return [list(again.size), list(again.convert("RGB").getpixel((1, 1)))]


def _regex(m):
    return m.findall(r"\p{Lu}\w+", "Hello world, \u00c9mile and Zo\u00eb")


def _brotli(m):
    data = b"abc" * 300
    return m.decompress(m.compress(data)) == data


def _bcrypt(m):
    digest = m.hashpw(b"secret", m.gensalt(rounds=4))
    return [digest.startswith(b"$2b$04$"), m.checkpw(b"secret", digest), m.checkpw(b"nope", digest)]


def _uvloop(m):
    async def answer():
        return 42
    loop = m.new_event_loop()
    try:
        return [type(loop).__module__, loop.run_until_complete(answer())]
    finally:
        loop.close()


def _psutil(m):
    process = m.Process(os.getpid())
    return [process.pid == os.getpid(), m.cpu_count() >= 1, process.memory_info().rss > 0]


def _xxhash(m):
    return [m.xxh32(b"abc").hexdigest(), m.xxh64(b"abc").hexdigest()]


def _lz4(m):
    data = b"lz4 " * 400
    return m.decompress(m.compress(data)) == data


def _ruamel_yaml(m):
    yaml = m.YAML(typ="safe")
    out = io.StringIO()
    yaml.dump({"b": [1, 2]}, out)
    return [yaml.load("a: [1, 2]\nb: {c: x}\n"), out.getvalue()]


def _rpds(m):
    mapping = m.HashTrieMap({"a": 1}).insert("b", 2)
    return [sorted(mapping.items()), "b" in mapping, len(m.List([1, 2, 3]).push_front(0))]


def _yaml(m):
    loader = getattr(m, "CSafeLoader", m.SafeLoader)
    return m.load("a: [1, 2]\nb: {c: x}\n", Loader=loader)


def _msgpack(m):
    packed = m.packb({"a": [1, 2]})
    return [packed.hex(), m.unpackb(packed)]


def _sqlalchemy(m):
    engine = m.create_engine("sqlite://")
    with engine.connect() as conn:
        return conn.execute(m.text("select 1 + :n"), {"n": 41}).scalar()


def _greenlet(m):
    child = m.greenlet(lambda x: x * 2)
    return child.switch(21)


def _multidict(m):
    md = m.MultiDict([("a", 1), ("b", 2), ("a", 3)])
    return [md.getall("a"), list(m.CIMultiDict(Key="v").keys()), md["b"]]


def _yarl(m):
    url = m.URL("http://example.test/a/b?c=1")
    return [str(url.with_query(d="2 3")), url.parent.path, str(url / "c")]


def _frozenlist(m):
    fl = m.FrozenList([1, 2])
    fl.append(3)
    fl.freeze()
    return [list(fl), fl.frozen, isinstance(hash(fl), int)]


def _websockets(m):
    from websockets.utils import accept_key, apply_mask
    return [accept_key("dGhlIHNhbXBsZSBub25jZQ=="), apply_mask(b"abcd", b"\x01\x02\x03\x04").hex()]


def _wrapt(m):
    @m.decorator
    def doubled(wrapped, instance, args, kwargs):
        return wrapped(*args, **kwargs) * 2

    @doubled
    def answer(n):
        return n

    return answer(21)


def _cbor2(m):
    packed = m.dumps({"a": [1, 2]})
    return [packed.hex(), m.loads(packed)]


def _propcache(m):
    calls = []

    class Thing:
        @m.cached_property
        def value(self):
            calls.append(1)
            return 42

    thing = Thing()
    return [thing.value, thing.value, len(calls)]


def _django(m):
    from django.utils.html import escape
    from django.utils.text import slugify
    return [list(m.VERSION[:2]), slugify("H\u00e9llo W\u00f6rld!"), str(escape("<a>&"))]


def _starlette(m):
    from starlette.datastructures import URL
    from starlette.responses import JSONResponse
    return [str(URL("http://x/a?b=1").replace(path="/c")), JSONResponse({"a": 1}).body.decode()]


def _anyio(m):
    async def answer():
        await m.sleep(0)
        return 42
    return m.run(answer)


def _markupsafe(m):
    return [str(m.escape("<a href='x'>&</a>")), str(m.Markup("<b>%s</b>") % "<i>")]


def _pydantic(m):
    class Item(m.BaseModel):
        n: int
        tags: list[str] = []

    try:
        Item(n="x")
        invalid = False
    except m.ValidationError:
        invalid = True
    return [Item(n="3", tags=["a"]).model_dump(), invalid]


def _cffi(m):
    ffi = m.FFI()
    ffi.cdef("int abs(int);")
    libc = ffi.dlopen(None)
    return libc.abs(-5)


# Per package (the name GILGAMESH_TEST_PACKAGE gives): the modules imported at start-up (the
# first is passed to its use) and the use. Importing the extension module here, not in the
# use, makes a package that cannot load fail the start, not the first request.
PACKAGES = {
    "flask": (("flask",), _flask),
    "requests": (("requests",), _requests),
    "urllib3": (("urllib3",), _urllib3),
    "charset_normalizer": (("charset_normalizer",), _charset_normalizer),
    "simplejson": (("simplejson",), _simplejson),
    "zstandard": (("zstandard",), _zstandard),
    "argon2": (("argon2",), _argon2),
    "cryptography": (("cryptography", "cryptography.fernet",
                      "cryptography.hazmat.primitives.hashes"), _cryptography),
    "msgspec": (("msgspec", "msgspec.json"), _msgspec),
    "ujson": (("ujson",), _ujson),
    "orjson": (("orjson",), _orjson),
    "lxml": (("lxml.etree",), _lxml),
    "PIL": (("PIL.Image",), _pil),
    "regex": (("regex",), _regex),
    "brotli": (("brotli",), _brotli),
    "bcrypt": (("bcrypt",), _bcrypt),
    "uvloop": (("uvloop",), _uvloop),
    "psutil": (("psutil",), _psutil),
    "xxhash": (("xxhash",), _xxhash),
    "lz4": (("lz4.frame",), _lz4),
    "ruamel.yaml": (("ruamel.yaml",), _ruamel_yaml),
    "rpds": (("rpds",), _rpds),
    "yaml": (("yaml",), _yaml),
    "msgpack": (("msgpack",), _msgpack),
    "sqlalchemy": (("sqlalchemy",), _sqlalchemy),
    "greenlet": (("greenlet",), _greenlet),
    "multidict": (("multidict",), _multidict),
    "yarl": (("yarl",), _yarl),
    "frozenlist": (("frozenlist",), _frozenlist),
    "websockets": (("websockets", "websockets.utils"), _websockets),
    "wrapt": (("wrapt",), _wrapt),
    "cbor2": (("cbor2",), _cbor2),
    "propcache": (("propcache.api",), _propcache),
    "django": (("django", "django.utils.html", "django.utils.text"), _django),
    "starlette": (("starlette", "starlette.datastructures", "starlette.responses"), _starlette),
    "anyio": (("anyio",), _anyio),
    "markupsafe": (("markupsafe",), _markupsafe),
    "pydantic": (("pydantic", "pydantic_core"), _pydantic),  # pydantic imports its core lazily
    "cffi": (("cffi", "_cffi_backend"), _cffi),
}

NAME = os.environ.get("GILGAMESH_TEST_PACKAGE", "")
if NAME not in PACKAGES:
    raise LookupError("GILGAMESH_TEST_PACKAGE=%r names no package of tests/apps/real_packages.py (%s)"
                      % (NAME, ", ".join(sorted(PACKAGES))))
_imports, _use = PACKAGES[NAME]
_modules = [importlib.import_module(name) for name in _imports]


def result():
    """The package's use, as a JSON-able value (the oracle runs it outside the server too)."""
    return _use(_modules[0])


@gilgamesh.route("/use")
def use(request):
    """{"package": NAME, "result": the use's value}."""
    return {"package": NAME, "result": result()}
