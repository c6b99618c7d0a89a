"""`manage.py benchmark_boards`: a short run prints the board's and the gallery's figures side
by side with their ratio, on pages that list the same results, and leaves nothing behind."""

import os
import re
import subprocess
import sys

import pytest
from django.conf import settings
from django.test import Client

from generations.gallery import PAGE_SIZE
from generations.management.commands.benchmark_boards import shown_results
from generations.management.commands.benchmark_gallery import create_gallery
from generations.models.boards import Board, BoardItem


def run_benchmark(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Its own throwaway database is made next to this (never created) one.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'bench.sqlite3'}"
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", "benchmark_boards", *arguments],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_benchmark_prints_the_board_beside_the_gallery_with_the_ratio(tmp_path):
    run = run_benchmark(tmp_path, "--results", "200", "--repeat", "2")

    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "Created 200 results on one board" in out
    assert "page    view        median ms    p95 ms  queries  board/gallery" in out
    for page in ("first", "middle"):
        assert re.search(rf"^{page}\s+board\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+x$", out, re.M)
        assert re.search(rf"^{page}\s+gallery\s+[\d.]+\s+[\d.]+\s+\d+$", out, re.M)
    assert "The throwaway database was dropped." in out
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_the_benchmark_refuses_a_board_larger_than_a_board_may_be(tmp_path):
    run = run_benchmark(tmp_path, "--results", "20001", "--repeat", "1")

    assert run.returncode != 0
    assert "at most 20,000 (the most a board holds)" in run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.django_db
def test_a_board_holding_every_result_in_finishing_order_lists_the_gallerys_pages(alice, bob):
    # What the benchmark compares must be the same results, or its ratio means nothing.
    tasks = create_gallery([alice, bob], PAGE_SIZE + 10)
    board = Board.objects.create(owner=bob, name="Everything")
    BoardItem.objects.bulk_create([BoardItem(board=board, task=task) for task in tasks])
    client = Client()
    client.force_login(alice)

    board_page = shown_results(client.get(f"/boards/{board.code}/").content.decode())
    gallery_page = shown_results(client.get("/gallery/").content.decode())

    assert len(board_page) == PAGE_SIZE
    assert board_page == gallery_page
