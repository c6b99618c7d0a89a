"""The dispatcher's due order, ties included, over active tasks only (it replaces the index on
every row's next_check_at, which a finished task leaves empty), and the newest succeeded tasks
for typical durations."""

from django.db import migrations, models

ACTIVE_STATES = ["queued", "submitted", "running", "fetching", "needs_review"]


class Migration(migrations.Migration):
    dependencies = [
        ("generations", "0009_task_prompt_search"),
    ]

    operations = [
        migrations.AlterField(
            model_name="task",
            name="next_check_at",
            field=models.DateTimeField(
                blank=True, help_text="When a worker looks at it next.", null=True
            ),
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                fields=["next_check_at", "id"],
                name="task_due_order",
                condition=models.Q(state__in=ACTIVE_STATES),
            ),
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                models.F("finished_at").desc(),
                name="succeeded_by_finish",
                condition=models.Q(state="succeeded"),
            ),
        ),
    ]
