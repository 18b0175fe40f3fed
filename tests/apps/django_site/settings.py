"""Settings of the test project: no apps, no middleware that needs a database table, one
sqlite database named by GILGAMESH_TEST_DJANGO_DB."""

import os

SECRET_KEY = "gilgamesh-test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "django_site.urls"
INSTALLED_APPS = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("GILGAMESH_TEST_DJANGO_DB", ":memory:"),
        "OPTIONS": {"timeout": 10},
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING_CONFIG = None
