"""Omniweb settings: one module, configured only through environment variables.

Every variable is listed in .env.example and in the README. A `.env` file in the project root
is read first if present; variables already set in the environment win over it.
"""

import os
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

from omniweb.env import (
    cache_config,
    database_config,
    dev_secret,
    encryption_keys,
    env_bool,
    env_int,
    env_list,
    env_str,
    gateway_allowed_hosts,
    q_cluster_config,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

load_dotenv(BASE_DIR / ".env", override=False)

DEBUG = env_bool("DEBUG", False)
# pytest sets PYTEST_VERSION for its whole run; tests then get a throwaway key like DEBUG does.
RUNNING_TESTS = "PYTEST_VERSION" in os.environ

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not (DEBUG or RUNNING_TESTS):
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. It is required when DEBUG is off: set SECRET_KEY to a long "
            "random string (for example the output of "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(50))'`)."
        )
    SECRET_KEY = dev_secret(VAR_DIR / "dev-secret-key")

# Provider API keys are encrypted with these Fernet keys (newest first), never with SECRET_KEY,
# so a leaked SECRET_KEY does not expose them and either can be rotated on its own.
OMNIWEB_ENCRYPTION_KEYS = encryption_keys(env_list("OMNIWEB_ENCRYPTION_KEYS"))
if not OMNIWEB_ENCRYPTION_KEYS:
    if not (DEBUG or RUNNING_TESTS):
        raise ImproperlyConfigured(
            "OMNIWEB_ENCRYPTION_KEYS is not set. It is required when DEBUG is off: set it to one "
            "or more Fernet keys, comma-separated, newest first."
        )
    from cryptography.fernet import Fernet

    OMNIWEB_ENCRYPTION_KEYS = [
        dev_secret(VAR_DIR / "dev-encryption-key", lambda: Fernet.generate_key().decode())
    ]

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    # The API's docs page is served from django-ninja's own static files, never a CDN.
    "ninja",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_q",
    "axes",
    "accounts",
    "generations",
    "generations.simulator",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every view needs a signed-in user unless it is marked @login_not_required.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a lockout into the page that explains it.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "omniweb.urls"
WSGI_APPLICATION = "omniweb.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL")
if not DATABASE_URL:
    VAR_DIR.mkdir(exist_ok=True)
    DATABASE_URL = f"sqlite:///{VAR_DIR / 'omniweb.sqlite3'}"
# Tests close connections after each request: the live server's threads would otherwise keep
# theirs open and block dropping the test database.
DATABASES = {"default": database_config(DATABASE_URL, conn_max_age=0 if RUNNING_TESTS else 60)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not memory, so tests can start a real worker process against the test database;
    # one per test process, so two suites running at once never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-omniweb-{os.getpid()}.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
CACHES = {"default": cache_config(REDIS_URL)}
Q_CLUSTER = q_cluster_config(REDIS_URL, workers=env_int("OMNIWEB_WORKERS", 2, minimum=1))

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # Refuses logins for a username from an address that failed too often, before checking.
    "accounts.backends.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Login throttling: a username is locked for one client address only, so a team behind one
# proxy or office address is never locked out together, and nobody can lock a colleague out
# from elsewhere for longer than the cool-off.
AXES_FAILURE_LIMIT = env_int("OMNIWEB_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("OMNIWEB_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Behind reverse proxies every client would share the proxy's address: name how many proxies
# append to X-Forwarded-For, and exactly that many entries of it, counted from the right, are
# believed (omniweb/clientip.py, RELIABILITY 32). Login throttling, the webhook and password
# reset limits and our log lines all ask that one function.
TRUSTED_PROXY_COUNT = env_int("OMNIWEB_TRUSTED_PROXY_COUNT", 0)
AXES_CLIENT_IP_CALLABLE = "omniweb.clientip.client_address"
# Prometheus at /metrics (generations/insight/metrics.py): readable with this bearer token, or
# from these addresses or CIDR ranges (the client address as believed above). Neither: off.
METRICS_TOKEN = env_str("OMNIWEB_METRICS_TOKEN", "")
METRICS_ALLOWED_ADDRESSES = env_list("OMNIWEB_METRICS_ALLOWED_ADDRESSES")
# Sessions end after this many days (and on logout).
SESSION_COOKIE_AGE = env_int("OMNIWEB_SESSION_DAYS", 14, minimum=1) * 86_400
LOGIN_URL = "login"
# A member signs in to make something: Create is where every visit starts.
LOGIN_REDIRECT_URL = "generations-create"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
if STATIC_ROOT.parent == VAR_DIR:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing folder
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
# S3-compatible object storage when a bucket is named; the local folder otherwise. Objects stay
# private: members get them through Omniweb, which redirects to a link signed for minutes.
S3_BUCKET = env_str("OMNIWEB_S3_BUCKET")
S3_ENDPOINT_URL = env_str("OMNIWEB_S3_ENDPOINT_URL")
S3_URL_SECONDS = env_int("OMNIWEB_S3_URL_SECONDS", 300, minimum=10)
if S3_BUCKET:
    DEFAULT_STORAGE = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": S3_ENDPOINT_URL,
            "region_name": env_str("OMNIWEB_S3_REGION"),
            "access_key": env_str("OMNIWEB_S3_ACCESS_KEY_ID"),
            "secret_key": env_str("OMNIWEB_S3_SECRET_ACCESS_KEY"),
            "default_acl": None,  # the bucket's own policy: private
            "querystring_auth": True,
            "querystring_expire": S3_URL_SECONDS,
            "file_overwrite": False,
            # Signature version 4: what current S3-compatible services accept.
            "signature_version": "s3v4",
            # A file read through the storage (a run's ZIP, a reference copied to a new task)
            # is kept in memory only up to this size, and on disk beyond it.
            "max_memory_size": 8 * 1024 * 1024,
        },
    }
else:
    DEFAULT_STORAGE = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": DEFAULT_STORAGE,
    # Hashed, compressed files need `collectstatic`; DEBUG and tests serve from the source.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG or RUNNING_TESTS
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# The gateway simulator answers under /simulator/ in the demo and the tests; never in production.
SIMULATOR_ENABLED = env_bool("OMNIWEB_SIMULATOR", DEBUG or RUNNING_TESTS)
# How long a simulated task takes from submit to result ("slow" prompts take five times longer).
SIMULATOR_SECONDS = env_int("OMNIWEB_SIMULATOR_SECONDS", 20, minimum=1)

# The task engine (generations/engine.py). Every duration is in seconds unless it says otherwise.
# A task still running past its deadline goes to "needs review"; one with no confirmed result
# after the final limit is failed and refunded.
TASK_DEADLINE_MINUTES = env_int("OMNIWEB_TASK_DEADLINE_MINUTES", 30, minimum=1)
TASK_FINAL_LIMIT_HOURS = env_int("OMNIWEB_TASK_FINAL_LIMIT_HOURS", 48, minimum=1)
# How long one gateway request may take in all: connecting (at most 5 seconds of it), sending,
# and reading the whole answer. Omixa's calls get its wait_seconds on top.
GATEWAY_TIMEOUT_SECONDS = env_int("OMNIWEB_GATEWAY_TIMEOUT_SECONDS", 30, minimum=1)
# Gateway calls and result downloads reach only public addresses (generations/outbound.py),
# except these host names, addresses and CIDR ranges: e.g. a self-hosted Omni Video on a private
# network. While the simulator is on, its own address (OMNIWEB_PUBLIC_URL's host and port) is
# allowed too.
GATEWAY_ALLOWED_HOSTS = gateway_allowed_hosts(env_list("OMNIWEB_GATEWAY_ALLOWED_HOSTS"))
# Polls start from the gateway's advice and grow towards this cap; errors back off towards the
# error cap; tasks in review are re-checked this often.
POLL_CAP_SECONDS = env_int("OMNIWEB_POLL_CAP_SECONDS", 60, minimum=1)
ERROR_BACKOFF_CAP_SECONDS = env_int("OMNIWEB_ERROR_BACKOFF_CAP_SECONDS", 300, minimum=1)
REVIEW_RECHECK_SECONDS = env_int("OMNIWEB_REVIEW_RECHECK_SECONDS", 300, minimum=1)
# A worker holds a task for at most this long; a dead worker's tasks are taken over after it.
LEASE_SECONDS = env_int("OMNIWEB_LEASE_SECONDS", 180, minimum=1)
# The dispatcher leases due tasks for this long per run, then hands over to the next run.
DISPATCH_SECONDS = env_int("OMNIWEB_DISPATCH_SECONDS", 50, minimum=1)
DISPATCHERS = env_int("OMNIWEB_DISPATCHERS", 1, minimum=1)
DISPATCH_CONCURRENCY = env_int("OMNIWEB_DISPATCH_CONCURRENCY", 8, minimum=1)
PER_KEY_CONCURRENCY = env_int("OMNIWEB_PER_KEY_CONCURRENCY", 4, minimum=1)
# How many of a dispatcher's slots one member's tasks may hold at once.
PER_MEMBER_CONCURRENCY = env_int("OMNIWEB_PER_MEMBER_CONCURRENCY", 4, minimum=1)
# Result downloads: capped in size and time; loopback is allowed only for the local simulator.
DOWNLOAD_MAX_BYTES = env_int("OMNIWEB_DOWNLOAD_MAX_MB", 500, minimum=1) * 1024 * 1024
DOWNLOAD_SECONDS = env_int("OMNIWEB_DOWNLOAD_SECONDS", 60, minimum=1)
DOWNLOAD_ALLOW_LOOPBACK = env_bool("OMNIWEB_DOWNLOAD_ALLOW_LOOPBACK", SIMULATOR_ENABLED)
# Uploaded reference images: the most pixels one may have (40 megapixels decode to at most
# 160 MB). The size is read from the file's header and a larger image is refused before it is
# decoded. Pillow's own limit is set from it too (generations/apps.py), which also caps the
# result images posters are made from. At least 64x64, the smallest image an upload may be.
# The batch page posts its rows back in its form: up to seven fields and one prompt of up to
# 4,000 characters a row, for as many rows as accounts.models.MAX_TASKS_PER_RUN (250) allows.
# Django's defaults (1,000 fields, 2.5 MB) would refuse a large batch with a bare error page.
DATA_UPLOAD_MAX_NUMBER_FIELDS = 2_000
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
UPLOAD_MAX_PIXELS = env_int("OMNIWEB_UPLOAD_MAX_PIXELS", 40_000_000, minimum=64 * 64)
# The address gateways can reach this site on, for webhooks. Without it Omniweb only polls.
PUBLIC_URL = (env_str("OMNIWEB_PUBLIC_URL") or "").rstrip("/")
WEBHOOK_RATE_PER_MINUTE = env_int("OMNIWEB_WEBHOOK_RATE_PER_MINUTE", 120, minimum=1)
# Password-reset emails: at most this many per account, and reset requests per client address,
# in each clock hour (omniweb/ratelimit.py, RELIABILITY 33).
PASSWORD_RESETS_PER_ACCOUNT_PER_HOUR = env_int(
    "OMNIWEB_PASSWORD_RESETS_PER_ACCOUNT_PER_HOUR", 3, minimum=1
)
PASSWORD_RESETS_PER_ADDRESS_PER_HOUR = env_int(
    "OMNIWEB_PASSWORD_RESETS_PER_ADDRESS_PER_HOUR", 10, minimum=1
)

# Submits accepted per member per minute (a stuck key or a script can't flood a gateway).
SUBMIT_RATE_PER_MINUTE = env_int("OMNIWEB_SUBMIT_RATE_PER_MINUTE", 20, minimum=1)
# API calls per personal token per minute, on top of the member's own submit rate.
API_RATE_PER_MINUTE = env_int("OMNIWEB_API_RATE_PER_MINUTE", 120, minimum=1)

# Content-Security-Policy: only this site's own scripts, styles and media (htmx is served from
# here too), plus the object store's signed links when media live there.
_MEDIA_SOURCES = ["'self'"] + ([S3_ENDPOINT_URL] if S3_BUCKET and S3_ENDPOINT_URL else [])
if S3_BUCKET and not S3_ENDPOINT_URL:
    _MEDIA_SOURCES.append("https://*.amazonaws.com")
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": [*_MEDIA_SOURCES, "data:"],
        "media-src": _MEDIA_SOURCES,
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# Email: printed to the console unless an SMTP server is configured.
EMAIL_HOST = env_str("EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "omniweb@localhost")

# HTTPS is the operator's statement that the site is served over TLS; it turns on secure
# cookies, the redirect to https and HSTS. Behind a proxy that terminates TLS, also trust its
# X-Forwarded-Proto header.
HTTPS = env_bool("OMNIWEB_HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", HTTPS)
if env_bool("OMNIWEB_TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# WhiteNoise finds files in the source folders while DEBUG is on; production runs collectstatic.
WHITENOISE_USE_FINDERS = DEBUG

DEFAULT_EXCEPTION_REPORTER_FILTER = "omniweb.reporting.SecretRedactingFilter"

# JSON lines in production (one object per record, for log collectors); plain text on a laptop.
LOG_FORMAT = env_str("LOG_FORMAT", "plain" if DEBUG or RUNNING_TESTS else "json")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json; got {LOG_FORMAT!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "omniweb.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    # httpx logs every request line at INFO; a signed result URL carries its token in the query.
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}
