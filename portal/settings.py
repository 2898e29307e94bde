"""Settings, all from the environment.

With nothing set the portal runs on one machine with nothing else installed:
SQLite under var/ and the in-memory channel layer. DATABASE_URL and REDIS_URL
switch on the distributed setup (PostgreSQL, channels-redis, Redis cache).
"""

import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PORTAL_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def load_or_create_secret_key() -> str:
    """Keep a generated key in var/ so sessions and derived keys survive restarts."""
    path = VAR_DIR / "secret_key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(50)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


SECRET_KEY = os.environ.get("SECRET_KEY") or load_or_create_secret_key()
DEBUG = env_bool("DEBUG")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
CSRF_FAILURE_VIEW = "portal.errors.csrf_failure"  # JSON on API paths

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "accounts",
    "tokens",
    "portal",
    "dashboard",
]

MIDDLEWARE = [
    "portal.metrics.RequestMetricsMiddleware",  # first: times everything below it, errors and static files too
    "django.middleware.security.SecurityMiddleware",
    "portal.middleware.ContentSecurityPolicyMiddleware",
    "portal.url_keys.KeysInUrlMiddleware",
    "portal.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# --- Security headers and HTTPS -------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# The dashboard and the API docs load only the portal's own files (vendored htmx, Chart.js, Swagger UI);
# no inline script anywhere. The two style hashes admit exactly the <style> that htmx 2.0.11 adds for its
# indicators and the one in drf-spectacular's Swagger UI page; Chart.js sizes canvases through the CSSOM,
# which style-src does not govern. data: images for Swagger UI's icons; 'self' in connect-src covers the
# same-origin websockets (/ws/dashboard/, /ws/chat/).
_STYLE_HASHES = "'sha256-faU7yAF8NxuMTNEwVmBz+VcYeIoBQ2EMHW3WaVxCvnk=' 'sha256-MMpT0iDxyjALd9PdfepImGX3DBfJPXZ4IlDWdPAgtn0='"
CONTENT_SECURITY_POLICY = os.environ.get(
    "PORTAL_CONTENT_SECURITY_POLICY",
    f"default-src 'self'; script-src 'self'; style-src 'self' {_STYLE_HASHES}; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'",
)
# PORTAL_HTTPS=1: the portal is reached over HTTPS only (TLS ends at the portal or at a proxy in front).
PORTAL_HTTPS = env_bool("PORTAL_HTTPS")
if PORTAL_HTTPS:
    SECURE_SSL_REDIRECT = True
    # Probes and scrapers on the private network speak plain HTTP: no redirect for them.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = int(os.environ.get("PORTAL_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("PORTAL_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("PORTAL_HSTS_PRELOAD")
    if not SECURE_HSTS_PRELOAD:
        # Preloading is a promise to browsers that is slow to take back: the operator opts in by name,
        # and not opting in is no deployment fault.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # A TLS-terminating proxy in front (nginx) says so in X-Forwarded-Proto; it must set the header itself
    # and never pass a client's through.
    if env_bool("PORTAL_BEHIND_PROXY", True):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
WSGI_APPLICATION = None

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
                "dashboard.context_processors.dashboard",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    # Under ASGI each request's sync code runs on a thread of its own, so a connection kept for the next
    # request is never reused: it stays open until PostgreSQL runs out of connections (two workers and
    # 64 clients did that in seconds). Django's advice for ASGI is CONN_MAX_AGE 0; the async side's
    # database threads (portal.db) keep theirs anyway, as they never see a request signal.
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "0")), conn_health_checks=True
        )
    }
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": VAR_DIR / "portal.sqlite3"}}
_database = DATABASES["default"]
if _database["ENGINE"].endswith("sqlite3"):  # the default, or DATABASE_URL=sqlite:///path
    # Writers queue for the lock instead of failing with "database is locked". Options in DATABASE_URL's
    # query string win.
    _database["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        **_database.get("OPTIONS", {}),
    }
elif _database["ENGINE"].endswith(("postgresql", "postgis")):
    # A database host that vanished (a failover) must fail a connection attempt quickly, not after the
    # kernel's minutes of retries: every database thread would be stuck in it. `?connect_timeout=` in
    # DATABASE_URL overrides it. It is libpq's option: sqlite3 refuses it with a TypeError.
    _database["OPTIONS"] = {"connect_timeout": 5, **_database.get("OPTIONS", {})}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer and cache ------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth ---------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
# The login throttle first: it refuses a locked login before any backend checks a password, on every login
# path (the dashboard, Django's admin, any authenticate() call). ModelBackend then checks the password.
AUTHENTICATION_BACKENDS = [
    "accounts.login_throttle.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise expects it even when serving from the app folders
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []
# Serve straight from the app folders so `make run` needs no collectstatic step.
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["portal.rate_limit.CallerRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["portal.parsers.JsonParser"],  # the bare doors' reader: strict, depth-limited
    "DEFAULT_PAGINATION_CLASS": "portal.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "portal.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "HF token portal API",
    "DESCRIPTION": "Lease pooled Hugging Face tokens, report outcomes, administer organizations.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "portal.schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "TokenStatusEnum": "tokens.policy.Status.CHOICES",
        "ReportStatusEnum": ["success", "error"],
    },
}

# --- Portal -------------------------------------------------------------------
# Touch an API key's last_used_at at most this often: a write per request would
# serialise every lease on SQLite.
PORTAL_KEY_TOUCH_INTERVAL = int(os.environ.get("PORTAL_KEY_TOUCH_INTERVAL", "60"))
# How long a worker may trust what it learnt about an API key (its user, role, pool) without asking the
# database again. Changes made on the same worker apply at once; 0 asks every time.
PORTAL_AUTH_CACHE_SECONDS = float(os.environ.get("PORTAL_AUTH_CACHE_SECONDS", "5"))
# Requests per minute one API key may make (a sliding window, across workers when REDIS_URL is set); 0: off.
PORTAL_KEY_RATE_LIMIT_PER_MINUTE = int(os.environ.get("PORTAL_KEY_RATE_LIMIT_PER_MINUTE", "6000"))
# The same per member (all of a user's keys and their dashboard chat together); unset: the key's number.
PORTAL_MEMBER_RATE_LIMIT_PER_MINUTE = (
    int(os.environ["PORTAL_MEMBER_RATE_LIMIT_PER_MINUTE"]) if os.environ.get("PORTAL_MEMBER_RATE_LIMIT_PER_MINUTE") else None
)
# Logins (the dashboard's, Django admin's, any authenticate() call; accounts.login_throttle): after this many
# failures for one username (or PORTAL_LOGIN_MAX_FAILURES_PER_IP from one address) within
# PORTAL_LOGIN_LOCKOUT_SECONDS, further attempts are refused until that window has passed.
PORTAL_LOGIN_MAX_FAILURES = int(os.environ.get("PORTAL_LOGIN_MAX_FAILURES", "5"))
PORTAL_LOGIN_MAX_FAILURES_PER_IP = int(os.environ.get("PORTAL_LOGIN_MAX_FAILURES_PER_IP", "30"))
PORTAL_LOGIN_LOCKOUT_SECONDS = int(os.environ.get("PORTAL_LOGIN_LOCKOUT_SECONDS", "900"))

# /metrics answers loopback without proxy headers, or anyone sending `Authorization: Bearer <this>`.
PORTAL_METRICS_TOKEN = os.environ.get("PORTAL_METRICS_TOKEN", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # No secret in any log line: every handler scrubs what it writes (a handler added here needs it too;
    # tests/portal/test_security_logs.py checks every handler of every logger).
    "filters": {"secrets": {"()": "portal.redact.SecretsFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["secrets"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's defaults give these loggers handlers of their own (a console one under DEBUG, mail_admins,
        # runserver's), which would write a record before the root's handler scrubs it: they log through the
        # root's instead. mail_admins never sent anything here (no ADMINS).
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
        "django.channels.server": {"level": "WARNING"},
        # httpx logs every upstream request at INFO: one line per relayed chat is noise, and costs.
        "httpx": {"level": "WARNING"},
    },
}

# Where Hugging Face lives; tests and `make demo` point these at the project's stand-in upstream.
HF_API_BASE = os.environ.get("HF_API_BASE", "https://huggingface.co").rstrip("/")
HF_INFERENCE_BASE_URL = os.environ.get("HF_INFERENCE_BASE_URL", "https://router.huggingface.co/v1").rstrip("/")
# Seconds a lease stays open without a report before it expires (new pools start with this).
PORTAL_LEASE_TTL = int(os.environ.get("PORTAL_LEASE_TTL", "600"))

# Backpressure, as TGI does it: over a limit a stream is refused at once with 429 `overloaded`.
PORTAL_MAX_CONCURRENT_REQUESTS = int(os.environ.get("PORTAL_MAX_CONCURRENT_REQUESTS", "128"))  # per worker
PORTAL_ORG_MAX_CONCURRENT_REQUESTS = int(os.environ.get("PORTAL_ORG_MAX_CONCURRENT_REQUESTS", "0"))  # 0: no limit
PORTAL_KEY_MAX_CONCURRENT_REQUESTS = int(os.environ.get("PORTAL_KEY_MAX_CONCURRENT_REQUESTS", "0"))  # 0: no limit
# Shared stream counts (Redis) are refreshed this often; a stream unrefreshed for three beats stops counting.
PORTAL_STREAM_HEARTBEAT_SECONDS = float(os.environ.get("PORTAL_STREAM_HEARTBEAT_SECONDS", "10"))
# The chat relay: tokens tried before the first byte, and how long upstream may take.
PORTAL_UPSTREAM_ATTEMPTS = int(os.environ.get("PORTAL_UPSTREAM_ATTEMPTS", "3"))
PORTAL_UPSTREAM_CONNECT_TIMEOUT = float(os.environ.get("PORTAL_UPSTREAM_CONNECT_TIMEOUT", "10"))
PORTAL_UPSTREAM_READ_TIMEOUT = float(os.environ.get("PORTAL_UPSTREAM_READ_TIMEOUT", "120"))
# Models /v1/models lists; empty: ask the upstream.
PORTAL_MODELS = env_list("PORTAL_MODELS", "")
# /proxy/hf/<path> relays to this origin with the Authorization header swapped for a leased token.
PORTAL_PROXY_BASE_URL = os.environ.get("PORTAL_PROXY_BASE_URL", "https://router.huggingface.co").rstrip("/")
# Threads that run the async side's database work on PostgreSQL (SQLite always uses one).
PORTAL_DB_THREADS = int(os.environ.get("PORTAL_DB_THREADS", "8"))
