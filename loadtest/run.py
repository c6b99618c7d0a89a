"""Simulated members using a running Omniweb over HTTP, for a bounded time.

    python -m loadtest.run --base-url http://127.0.0.1:8000 --members 50 --seconds 60 \\
        --password PASSWORD --usernames-prefix load-

Each member (usernames PREFIX00, PREFIX01, ...: they must exist, share the password, have
credits and an active APIMart key) logs in through the login form and then, until the time is
up, loops: the gallery (sometimes its next page, through the page's own cursor link, or a
filter), their tasks, the create page, and in one iteration out of five a submit through the
create form (Omni-Flash-Ext, 4 s, 720p, 16:9, their own key, visible to the team) with the
page's CSRF token and form token. A member pauses about `--think` seconds between iterations.

It needs only the standard library and httpx, and never imports Django: run it from any
machine that reaches the site. At the end it prints a summary (requests; per endpoint the
count, median, 95th percentile and slowest time in ms and the status codes; 5xx answers;
submits accepted and refused, with the refusals' messages) as text, then the same figures as
one JSON line. The exit code is 1 if any answer was a 5xx, a request failed without an answer
(timeout, connection refused) or a member could not log in; 0 otherwise.
"""

from __future__ import annotations

import argparse
import html
import json
import random
import re
import sys
import threading
import time
from collections import Counter, defaultdict

import httpx

MODEL = "apimart/Omni-Flash-Ext"
SUBMIT_EVERY = 5  # one iteration in this many submits a task
GALLERY_FILTERS = ("kind=video", "kind=image", "q=fox", "fav=1")
REQUEST_SECONDS = 30.0

CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
KEY_SELECT = re.compile(r'<select name="key"[^>]*>(.*?)</select>', re.S)
OPTION = re.compile(r'<option value="([^"]+)"')
NEXT_PAGE = re.compile(r'class="gallery-more" hx-get="([^"]+)"')
SUMMARY = re.compile(r'id="create-summary">(.*?)</div>', re.S)
TAG = re.compile(r"<[^>]+>")


def percentile(samples: list[float], percent: int) -> float:
    """The nearest-rank percentile; 0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[max(0, -(-len(ordered) * percent // 100) - 1)]


class Stats:
    """What every member saw, gathered from all threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.errors: Counter = Counter()
        self.error_examples: list[str] = []
        self.login_failures = 0
        self.accepted = 0
        self.refusals: Counter = Counter()

    def answered(self, endpoint: str, status: int, ms: float) -> None:
        with self.lock:
            self.times[endpoint].append(ms)
            self.statuses[endpoint][status] += 1

    def failed(self, endpoint: str, exc: Exception) -> None:
        with self.lock:
            self.errors[endpoint] += 1
            if len(self.error_examples) < 5:
                self.error_examples.append(f"{endpoint}: {exc!r}")

    def summary(self, members: int, seconds: float, elapsed: float) -> dict:
        endpoints = {}
        for name in sorted(self.times):
            samples = self.times[name]
            endpoints[name] = {
                "count": len(samples),
                "p50_ms": round(percentile(samples, 50), 1),
                "p95_ms": round(percentile(samples, 95), 1),
                "max_ms": round(max(samples), 1),
                "statuses": {str(k): v for k, v in sorted(self.statuses[name].items())},
            }
        pages = [ms for name, samples in self.times.items() if name in PAGES for ms in samples]
        requests = sum(len(samples) for samples in self.times.values())
        return {
            "members": members,
            "seconds": seconds,
            "elapsed_seconds": round(elapsed, 1),
            "requests": requests,
            "requests_per_second": round(requests / elapsed, 1) if elapsed else 0.0,
            "page_p50_ms": round(percentile(pages, 50), 1),
            "page_p95_ms": round(percentile(pages, 95), 1),
            "5xx": sum(
                count
                for counter in self.statuses.values()
                for status, count in counter.items()
                if status >= 500
            ),
            "errors": sum(self.errors.values()),
            "error_examples": self.error_examples,
            "login_failures": self.login_failures,
            "submits_accepted": self.accepted,
            "submits_refused": sum(self.refusals.values()),
            "refusals": dict(self.refusals.most_common(10)),
            "endpoints": endpoints,
        }


# The pages a member looks at; the page figures leave out logins and submits.
PAGES = ("gallery", "gallery next page", "gallery filtered", "tasks", "create")


class Member:
    """One simulated member with a session of their own."""

    def __init__(self, args: argparse.Namespace, username: str, stats: Stats, deadline: float):
        self.args = args
        self.username = username
        self.stats = stats
        self.deadline = deadline
        self.random = random.Random(username)
        self.client = httpx.Client(
            base_url=args.base_url, timeout=REQUEST_SECONDS, follow_redirects=False
        )

    def time_left(self) -> bool:
        return time.monotonic() < self.deadline

    def request(self, endpoint: str, method: str, url: str, **kwargs) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.stats.failed(endpoint, exc)
            return None
        self.stats.answered(endpoint, response.status_code, (time.perf_counter() - started) * 1000)
        return response

    def run(self) -> None:
        try:
            if not self.log_in():
                with self.stats.lock:
                    self.stats.login_failures += 1
                return
            offset = self.random.randrange(SUBMIT_EVERY)
            iteration = 0
            while self.time_left():
                self.iteration(submit=iteration % SUBMIT_EVERY == offset)
                iteration += 1
                pause = self.args.think * self.random.uniform(0.5, 1.5)
                time.sleep(max(0.0, min(pause, self.deadline - time.monotonic())))
        finally:
            self.client.close()

    def log_in(self) -> bool:
        page = self.request("login form", "GET", "/accounts/login/")
        token = CSRF.search(page.text) if page is not None and page.status_code == 200 else None
        if token is None:
            return False
        answer = self.request(
            "login",
            "POST",
            "/accounts/login/",
            data={
                "csrfmiddlewaretoken": token.group(1),
                "username": self.username,
                "password": self.args.password,
                "next": "",
            },
            headers={"Referer": f"{self.args.base_url}/accounts/login/"},
        )
        return answer is not None and answer.status_code == 302

    def iteration(self, *, submit: bool) -> None:
        gallery = self.request("gallery", "GET", "/gallery/")
        if not self.time_left():
            return
        choice = self.random.random()
        following = NEXT_PAGE.search(gallery.text) if gallery is not None else None
        if choice < 0.3 and following:
            self.request("gallery next page", "GET", html.unescape(following.group(1)))
        elif choice < 0.5:
            query = self.random.choice(GALLERY_FILTERS)
            self.request("gallery filtered", "GET", f"/gallery/?{query}")
        if not self.time_left():
            return
        self.request("tasks", "GET", "/tasks/")
        if not self.time_left():
            return
        # The create page for the model the member submits, as the model picker would show it.
        create = self.request("create", "GET", "/create/", params={"model": MODEL})
        if submit and create is not None and create.status_code == 200 and self.time_left():
            self.submit(create.text)

    def submit(self, page: str) -> None:
        csrf, token, keys = CSRF.search(page), FORM_TOKEN.search(page), KEY_SELECT.search(page)
        key = OPTION.search(keys.group(1)) if keys else None
        if not (csrf and token and key):
            with self.stats.lock:
                self.stats.refusals["the create page had no form, token or key to submit"] += 1
            return
        answer = self.request(
            "create submit",
            "POST",
            "/create/",
            data={
                "csrfmiddlewaretoken": csrf.group(1),
                "form_token": token.group(1),
                "prompt": f"a red fox in the snow, take {self.random.randrange(10**6)}",
                "model": MODEL,
                "duration": "4",
                "resolution": "720p",
                "aspect_ratio": "16:9",
                "key": html.unescape(key.group(1)),
                "visibility": "team",
            },
            headers={"Referer": f"{self.args.base_url}/create/"},
        )
        if answer is None or answer.status_code >= 500:
            return
        with self.stats.lock:
            if answer.status_code == 302:
                self.stats.accepted += 1
            else:
                self.stats.refusals[refusal_message(answer)] += 1


def refusal_message(answer: httpx.Response) -> str:
    found = SUMMARY.search(answer.text)
    if found:
        words = " ".join(html.unescape(TAG.sub(" ", found.group(1))).split())
        return words or f"HTTP {answer.status_code}"
    return f"HTTP {answer.status_code} without a message"


def report(summary: dict) -> str:
    lines = [
        f"Load: {summary['members']} members for {summary['seconds']:g} s "
        f"({summary['elapsed_seconds']:g} s with the last answers)",
        f"Requests: {summary['requests']:,} ({summary['requests_per_second']:g}/s); "
        f"pages p50 {summary['page_p50_ms']:g} ms, p95 {summary['page_p95_ms']:g} ms; "
        f"5xx: {summary['5xx']}; failed without an answer: {summary['errors']}; "
        f"logins failed: {summary['login_failures']}",
        "",
        f"{'endpoint':<20}{'count':>7}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}  statuses",
    ]
    for name, figures in summary["endpoints"].items():
        statuses = ", ".join(f"{code}: {n}" for code, n in figures["statuses"].items())
        lines.append(
            f"{name:<20}{figures['count']:>7}{figures['p50_ms']:>9.1f}{figures['p95_ms']:>9.1f}"
            f"{figures['max_ms']:>9.1f}  {statuses}"
        )
    lines += [
        "",
        f"Submits: {summary['submits_accepted']} accepted, "
        f"{summary['submits_refused']} refused with a message",
    ]
    lines += [f"  refused ×{n}: {message}" for message, n in summary["refusals"].items()]
    lines += [f"  failed: {example}" for example in summary["error_examples"]]
    return "\n".join(lines)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--base-url", required=True, help="The site, e.g. http://127.0.0.1:8000")
    parser.add_argument("--members", type=int, default=50, help="Simulated members (50).")
    parser.add_argument("--seconds", type=float, default=60.0, help="How long to run (60).")
    parser.add_argument("--password", required=True, help="Every member's password.")
    parser.add_argument(
        "--usernames-prefix", default="load-", help="Usernames are this plus 00, 01, ..."
    )
    parser.add_argument(
        "--think", type=float, default=1.0, help="Seconds a member pauses between iterations (1)."
    )
    args = parser.parse_args(argv)
    if not 1 <= args.members <= 1000:
        parser.error("--members must be 1 to 1,000.")
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be above 0 and at most 3,600.")
    if not 0 <= args.think <= 60:
        parser.error("--think must be 0 to 60.")
    args.base_url = args.base_url.rstrip("/")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    digits = max(2, len(str(args.members - 1)))
    stats = Stats()
    started = time.monotonic()
    deadline = started + args.seconds
    members = [
        Member(args, f"{args.usernames_prefix}{n:0{digits}d}", stats, deadline)
        for n in range(args.members)
    ]
    threads = [
        threading.Thread(target=member.run, name=member.username, daemon=True) for member in members
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + REQUEST_SECONDS * 2)
    elapsed = time.monotonic() - started
    summary = stats.summary(args.members, args.seconds, elapsed)
    print(report(summary))
    print(json.dumps(summary, sort_keys=True), flush=True)
    failed = summary["5xx"] or summary["errors"] or summary["login_failures"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
