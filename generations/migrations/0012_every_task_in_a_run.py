"""Every task made before runs existed becomes a run of one, named after its prompt, with
its owner, visibility and time: from now on every task belongs to a run."""

from django.db import migrations

BATCH = 1000
NAME_CHARS = 80


def name_for(prompt: str) -> str:
    # The same rule as Run.name_for, copied: a migration must not change when the model does.
    text = " ".join(prompt.split())
    if len(text) > NAME_CHARS:
        text = text[: NAME_CHARS - 1].rstrip() + "…"
    return text or "Untitled run"


def runs_of_one(apps, schema_editor):
    Task = apps.get_model("generations", "Task")
    Run = apps.get_model("generations", "Run")
    alias = schema_editor.connection.alias
    last = 0
    while True:
        # Keyset pages, so memory stays one page however many tasks there are.
        tasks = list(
            Task.objects.using(alias)
            .filter(pk__gt=last, run__isnull=True)
            .order_by("pk")
            .only("pk", "user_id", "prompt", "visibility", "created_at")[:BATCH]
        )
        if not tasks:
            return
        runs = Run.objects.using(alias).bulk_create(
            Run(
                user_id=task.user_id,
                name=name_for(task.prompt),
                visibility=task.visibility,
                created_at=task.created_at,
            )
            for task in tasks
        )
        for task, run in zip(tasks, runs, strict=True):
            task.run_id = run.pk
        Task.objects.using(alias).bulk_update(tasks, ["run"])
        last = tasks[-1].pk


class Migration(migrations.Migration):
    dependencies = [("generations", "0011_runs")]

    operations = [migrations.RunPython(runs_of_one, migrations.RunPython.noop)]
