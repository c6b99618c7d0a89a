"""Operating Omniweb: the stuck_tasks command, and gunicorn serving the site as in production."""

import io
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts import ledger
from accounts.models import LedgerEntry, ProviderKey
from generations import services
from generations.models import Task, TaskEvent
from generations.providers import GenerationRequest
from generations.services import cancel_task, fail_task, submit_task
from tests.helpers import database_url, free_port, production_environment, wait_for

CAT = GenerationRequest("apimart", "Omni-Flash-Ext", "a cat", duration=4)


def task_row(user, **fields) -> Task:
    """An unsaved task with every required field, for bulk_create (no ledger entries)."""
    values = {
        "user": user,
        "provider": "apimart",
        "model": "Omni-Flash-Ext",
        "kind": "video",
        "prompt": "a cat",
        "key_label": "Mine (APIMart sk-…0001)",
        "price_unit": "second",
        "price_credits_per_unit": 5,
        "price_units": 4,
        "price_multiplier": Decimal("1"),
        "credits_charged": 20,
    }
    values.update(fields)
    return Task(**values)


@pytest.fixture
def no_jobs(monkeypatch):
    """Submits queue a job after commit; no worker runs in these tests, so none is queued."""
    monkeypatch.setattr(services, "enqueue_submit", lambda pk: None)


@pytest.fixture
def submit(alice, bob, carol, no_jobs):
    """Submit a real task (debit and all) for alice or bob, `minutes` old, with its deadline
    `deadline_in` minutes from now (None: no deadline)."""
    keys = {}
    for member in (alice, bob):
        ledger.grant(member, 1000, by=carol, reason="tests")
        key = ProviderKey(provider="apimart", label="Mine", owner=member)
        key.set_secret("sk-test-0001")
        key.save()
        keys[member.pk] = key

    def make(member=alice, *, minutes=0, deadline_in=30, state=None, message="") -> Task:
        task, _ = submit_task(member, CAT, key=keys[member.pk])
        if state == Task.State.FAILED:  # ended the real way, refund included
            fail_task(task, actor="tests", reason="Failed at the gateway.")
        elif state == Task.State.CANCELED:
            cancel_task(task, actor="tests")
        elif state:
            Task.objects.filter(pk=task.pk).update(state=state)
        now = timezone.now()
        fields = {
            "created_at": now - timedelta(minutes=minutes),
            "deadline_at": None if deadline_in is None else now + timedelta(minutes=deadline_in),
        }
        if message:
            fields["message"] = message
        Task.objects.filter(pk=task.pk).update(**fields)
        task.refresh_from_db()
        return task

    return make


def run(*args: str) -> tuple[int, str, str]:
    """Run stuck_tasks in this process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("stuck_tasks", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, out.getvalue(), err.getvalue() + str(exc)
    return 0, out.getvalue(), err.getvalue()


def refunds(task: Task) -> int:
    return LedgerEntry.objects.filter(task=task, kind=LedgerEntry.Kind.REFUND).count()


# --- stuck_tasks --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_exits_0_when_no_task_is_stuck(submit):
    submit(minutes=5)  # running, its deadline still ahead
    submit(minutes=600, deadline_in=-500, state=Task.State.SUCCEEDED)  # ended long ago

    code, out, _ = run()

    assert code == 0
    assert "No active tasks past their deadline." in out


@pytest.mark.django_db
def test_it_lists_stuck_tasks_oldest_first_and_exits_1(submit, alice, bob):
    fresh = submit(minutes=5)
    overdue = submit(minutes=40, deadline_in=-10, message="Still rendering\n(62%)")
    undated = submit(bob, minutes=125, deadline_in=None, state=Task.State.NEEDS_REVIEW)
    young_undated = submit(minutes=10, deadline_in=None)
    finished = submit(minutes=300, deadline_in=-270, state=Task.State.FAILED)

    code, out, err = run()

    assert code == 1
    assert "2 tasks are stuck" in err
    lines = out.splitlines()
    assert lines[0] == "2 active tasks past their deadline, oldest first:"
    assert lines[1].split() == [
        "task",
        "member",
        "gateway/model",
        "state",
        "age",
        "last",
        "message",
    ]
    assert lines[2].split() == [
        str(undated.code), "bob", "apimart/Omni-Flash-Ext", "needs_review", "2h", "05m", "-"
    ]  # fmt: skip
    assert lines[3].split() == [
        str(overdue.code), "alice", "apimart/Omni-Flash-Ext", "queued", "40m",
        "Still", "rendering", "(62%)",
    ]  # fmt: skip
    assert len(lines) == 4
    for task in (fresh, young_undated, finished):
        assert str(task.code) not in out


@pytest.mark.django_db
def test_older_than_minutes_counts_age_instead_of_the_deadline(submit):
    young = submit(minutes=20)  # deadline ahead, but older than 15 minutes
    old_overdue = submit(minutes=90, deadline_in=-60)
    brand_new = submit(minutes=1, deadline_in=-1)  # past its deadline, but only a minute old

    code, out, _ = run("--older-than-minutes", "15")

    assert code == 1
    assert "2 active tasks created more than 15 minutes ago" in out
    assert out.index(str(old_overdue.code)) < out.index(str(young.code))
    assert str(brand_new.code) not in out


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_older_than_minutes_refuses_anything_but_a_positive_number(value):
    with pytest.raises(CommandError, match="whole number of minutes"):
        call_command("stuck_tasks", "--older-than-minutes", value)


@pytest.mark.django_db
def test_fail_refunds_each_stuck_task_once_and_a_second_run_has_nothing_to_do(submit, alice, bob):
    stuck = [submit(minutes=60, deadline_in=-30), submit(bob, minutes=120, deadline_in=None)]
    running = submit(minutes=2)

    code, out, err = run("--fail")

    assert code == 0, err
    for task in stuck:
        task.refresh_from_db()
        assert task.state == Task.State.FAILED
        assert task.finished_at is not None
        charged = task.credits_charged
        assert f"failed and refunded {charged} credits by an administrator" in task.message
        assert refunds(task) == 1
        event = TaskEvent.objects.filter(task=task).latest("pk")
        assert (event.to_state, event.actor) == ("failed", "command:stuck_tasks")
        assert f"failed and refunded task {task.code}" in out
    assert "Failed and refunded: 2; already ended, skipped: 0." in out
    assert "ledger audit passed" in out
    alice.refresh_from_db()
    bob.refresh_from_db()
    # Only `running` is still paid for.
    assert (alice.credit_balance, bob.credit_balance) == (1000 - running.credits_charged, 1000)

    code, out, err = run("--fail")

    assert code == 0, err
    assert "No active tasks past their deadline." in out
    assert "Failed and refunded: 0; already ended, skipped: 0." in out
    assert "ledger audit passed" in out
    assert [refunds(task) for task in stuck] == [1, 1]
    running.refresh_from_db()
    assert running.state == Task.State.QUEUED and refunds(running) == 0
    assert ledger.audit() == []


@pytest.mark.django_db
def test_fail_never_touches_ended_tasks(submit):
    ended = [
        submit(minutes=600, deadline_in=-500, state=state)
        for state in (Task.State.SUCCEEDED, Task.State.CANCELED, Task.State.FAILED)
    ]
    before = {t.pk: (t.state, t.updated_at, t.message) for t in Task.objects.all()}
    entries = LedgerEntry.objects.count()

    code, out, _ = run("--fail")

    assert code == 0
    assert "No active tasks past their deadline." in out
    after = {t.pk: (t.state, t.updated_at, t.message) for t in Task.objects.all()}
    assert after == before
    assert LedgerEntry.objects.count() == entries
    assert not TaskEvent.objects.filter(task__in=ended, actor="command:stuck_tasks").exists()


@pytest.mark.django_db
def test_fail_skips_and_counts_a_task_another_path_ended_meanwhile(submit, monkeypatch):
    first = submit(minutes=90, deadline_in=-60)
    second = submit(minutes=60, deadline_in=-30)

    def member_cancels_first(task, **kwargs):
        if task.pk == first.pk:  # the member cancels between the listing and the fail
            cancel_task(Task.objects.get(pk=task.pk), actor="member")
        return fail_task(task, **kwargs)

    monkeypatch.setattr(
        "generations.management.commands.stuck_tasks.fail_task", member_cancels_first
    )
    code, out, err = run("--fail")

    assert code == 0, err
    assert f"skipped task {first.code}: it has ended already" in out
    assert "Failed and refunded: 1; already ended, skipped: 1." in out
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.state, second.state) == (Task.State.CANCELED, Task.State.FAILED)
    assert refunds(first) == refunds(second) == 1
    assert "ledger audit passed" in out


@pytest.mark.django_db
def test_fail_exits_2_when_the_ledger_audit_finds_a_problem(submit, alice):
    submit(minutes=60, deadline_in=-30)
    type(alice).objects.filter(pk=alice.pk).update(credit_balance=5)  # a balance gone wrong

    code, out, err = run("--fail")

    assert code == 2
    assert "Failed and refunded: 1" in out
    assert "alice: cached balance" in err
    assert "Ledger audit failed: 1 problems." in err
    assert "ledger audit passed" not in out


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_command_gives_monitors_real_exit_codes(submit):
    submit(minutes=60, deadline_in=-30)

    def manage(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "DATABASE_URL": database_url()}
        return subprocess.run(
            [sys.executable, "manage.py", "stuck_tasks", *args],
            cwd=settings.BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = manage()
    assert listed.returncode == 1, listed.stderr
    assert "1 active tasks past their deadline" in listed.stdout
    fixed = manage("--fail")
    assert fixed.returncode == 0, fixed.stderr
    assert "ledger audit passed" in fixed.stdout
    again = manage()
    assert again.returncode == 0, again.stderr


# --- gunicorn -----------------------------------------------------------------------------------


def gunicorn_config(monkeypatch, **env: str) -> dict:
    for name in ("OMNIWEB_BIND", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS", "OMNIWEB_MAX_REQUESTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(Path(settings.BASE_DIR) / "gunicorn.conf.py"))


def test_gunicorn_config_has_safe_defaults(monkeypatch):
    config = gunicorn_config(monkeypatch)

    assert config["bind"] == ["127.0.0.1:8000"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert config["workers"] == min(2 * cores + 1, 8)
    assert (config["worker_class"], config["threads"]) == ("gthread", 4)
    assert (config["timeout"], config["graceful_timeout"], config["keepalive"]) == (60, 30, 5)
    assert (config["max_requests"], config["max_requests_jitter"]) == (50_000, 5_000)
    assert config["preload_app"] is False
    assert config["forwarded_allow_ips"] == "127.0.0.1"
    assert config["accesslog"] == "-"
    assert "%(U)s" in config["access_log_format"]
    for leaky in ("%(r)s", "%(q)s", "%(f)s", "{referer}i"):
        assert leaky not in config["access_log_format"]


def test_gunicorn_config_reads_the_environment(monkeypatch):
    config = gunicorn_config(
        monkeypatch,
        OMNIWEB_BIND="0.0.0.0:9000",
        WEB_CONCURRENCY="3",
        FORWARDED_ALLOW_IPS="10.0.0.5,10.0.0.6",
    )
    assert config["bind"] == ["0.0.0.0:9000"]
    assert config["workers"] == 3
    assert config["forwarded_allow_ips"] == "10.0.0.5,10.0.0.6"


@pytest.mark.parametrize("value", ["lots", "0"])
def test_gunicorn_config_stops_on_a_bad_worker_count(monkeypatch, value):
    with pytest.raises(SystemExit, match="WEB_CONCURRENCY must be"):
        gunicorn_config(monkeypatch, WEB_CONCURRENCY=value)


class Output:
    """Collects a child's output lines from a pipe, so the pipe never fills up."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_gunicorn_serves_the_site_as_in_production(tmp_path):
    port = free_port()
    static_root = tmp_path / "static"
    env = production_environment(
        DATABASE_URL=database_url(),
        OMNIWEB_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="2",
        ALLOWED_HOSTS="studio.example.com,127.0.0.1",
        OMNIWEB_HTTPS="0",
        STATIC_ROOT=str(static_root),
        MEDIA_ROOT=str(tmp_path / "media"),
    )
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    collect = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collect.returncode == 0, collect.stderr[-3000:]
    manifest = json.loads((static_root / "staticfiles.json").read_text())
    hashed_css = manifest["paths"]["css/omniweb.css"]
    assert hashed_css != "css/omniweb.css"

    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "omniweb.wsgi", "-c", "gunicorn.conf.py"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = Output(server.stdout), Output(server.stderr)
    base = f"http://127.0.0.1:{port}"

    def answers():
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return server.poll() is not None  # stop waiting if it died

    try:
        assert wait_for(answers, 60), stderr.text[-3000:]
        assert server.poll() is None, stderr.text[-3000:]
        with httpx.Client(base_url=base, timeout=10) as web:
            health = web.get("/healthz")
            assert health.status_code == 200
            assert health.headers["content-type"] == "application/json"
            body = health.json()
            assert body["database"]["ok"] is True
            assert body["tasks"] == {"active": 0, "oldest_active_seconds": None, "stuck": 0}

            login = web.get("/accounts/login/")
            assert login.status_code == 200
            assert login.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in login.headers["content-security-policy"]
            assert 'name="csrfmiddlewaretoken"' in login.text

            css = web.get(f"/static/{hashed_css}")
            assert css.status_code == 200
            assert css.headers["content-type"].startswith("text/css")
            cache = css.headers["cache-control"]
            assert "max-age=315360000" in cache and "immutable" in cache
            assert "--accent" in css.text

            assert web.get("/healthz?token=secret").status_code == 200
            web.get("/hooks/hooksecret42")
            web.get("/ref/refsecret42")
            web.get("/accounts/reset/MQ/resetsecret42/")
        assert wait_for(lambda: "/accounts/reset/" in stdout.text, 10), stdout.text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        stdout.thread.join(5)
        stderr.thread.join(5)

    assert server.returncode == 0, stderr.text[-3000:]
    access = [line for line in stdout.lines if '"GET /' in line]
    assert len(access) >= 8, stdout.text
    assert any('"GET /healthz HTTP/1.1" 200' in line for line in access)
    assert any(f'"GET /static/{hashed_css} HTTP/1.1" 200' in line for line in access)
    assert any('"GET /hooks/[redacted] HTTP/1.1"' in line for line in access)
    for secret in ("secret", "?"):
        assert secret not in stdout.text, stdout.text
    for secret in ("token=secret", "resetsecret42"):
        assert secret not in stderr.text, stderr.text
    assert "Shutting down: Master" in stderr.text
    assert "Control socket" not in stderr.text
