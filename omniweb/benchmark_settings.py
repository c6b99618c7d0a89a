"""Settings for the processes `manage.py benchmark` starts on its throwaway database: the
gunicorn server its HTTP submits go to, and the dispatcher whose polls it counts.

They are the site's own settings with four differences, so what is measured is what production
runs: DEBUG off (the debug cursor would record every query); the bare views the figures are
compared with (omniweb.benchmark_urls); static URLs without a collectstatic manifest, which a
development copy may lack; and a job queue of the run's own, so the jobs its submits and
dispatcher enqueue never reach a real worker (the benchmark deletes that queue afterwards).
The benchmark sets OMNIWEB_BENCHMARK_QUEUE and DATABASE_URL for these processes; without them,
or with a database that is not a throwaway one, this module refuses to load.
"""

import os

from django.core.exceptions import ImproperlyConfigured

from omniweb.settings import *  # noqa: F403
from omniweb.settings import DATABASES, Q_CLUSTER, STORAGES

BENCHMARK_QUEUE = os.environ.get("OMNIWEB_BENCHMARK_QUEUE", "")
if not BENCHMARK_QUEUE.startswith("omniweb-benchmark-"):
    raise ImproperlyConfigured(
        "omniweb.benchmark_settings is only for the processes `manage.py benchmark` starts."
    )
if "benchmark" not in str(DATABASES["default"]["NAME"]):
    raise ImproperlyConfigured("The benchmark's processes run only on its throwaway database.")

DEBUG = False
ROOT_URLCONF = "omniweb.benchmark_urls"
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
Q_CLUSTER = {**Q_CLUSTER, "name": BENCHMARK_QUEUE}
