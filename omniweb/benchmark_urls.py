"""The site's URLs plus the bare views `manage.py benchmark` compares the site against.

Served only while a benchmark measures: by the test client inside the benchmark commands (with
ROOT_URLCONF overridden for the run) and by the gunicorn server the benchmark starts on its
throwaway database (omniweb.benchmark_settings). The production URLconf never includes it.

Each bare view does the least its counterpart can do behind the same middleware (session,
authentication, CSRF, messages, htmx), so a ratio between the two says what the real page or
submit costs beyond that.
"""

from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import include, path
from django.views.decorators.http import require_POST

from generations.management.commands.benchmark_gallery import (
    BARE_PATH,
    bare_gallery,
    bare_template,
)
from generations.models import Task, TaskEvent

BARE_TASKS_PATH = "/benchmark/bare-tasks/"
BARE_INSERT_PATH = "/benchmark/bare-insert/"


def bare_tasks(request: HttpRequest) -> HttpResponse:
    """The least My tasks can cost: the member's first 24 tasks, in the page's order, from one
    query, as escaped prompts in a minimal template."""
    prompts = list(Task.objects.owned_by(request.user).values_list("prompt", flat=True)[:24])
    return HttpResponse(bare_template().render({"prompts": prompts}))


@require_POST
def bare_insert(request: HttpRequest) -> HttpResponse:
    """The least a submit can cost: a logged-in POST that passed the CSRF check writes one row
    (an event on the task it names) in one transaction, and redirects as a submit does."""
    with transaction.atomic():
        TaskEvent.objects.create(
            task_id=int(request.POST["task"]), to_state="queued", actor="benchmark"
        )
    return HttpResponseRedirect("/tasks/")


urlpatterns = [
    path(BARE_PATH.lstrip("/"), bare_gallery),
    path(BARE_TASKS_PATH.lstrip("/"), bare_tasks),
    path(BARE_INSERT_PATH.lstrip("/"), bare_insert),
    path("", include("omniweb.urls")),
]
