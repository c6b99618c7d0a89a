"""The full-text index the prompt search uses on PostgreSQL (TaskQuerySet.search).

A GIN index over the prompt's English words. Its expression must be exactly the one the search
filters on, or PostgreSQL will not use it; tests/test_search.py checks the plan. SQLite has no
such index and searches without one, so there this migration does nothing. The index is not
part of the model's state: Django cannot describe it for both databases.
"""

from django.db import migrations

INDEX = "task_prompt_words"
CREATE = (
    f"CREATE INDEX IF NOT EXISTS {INDEX} ON generations_task "
    "USING gin (to_tsvector('english'::regconfig, COALESCE(prompt, '')))"
)
DROP = f"DROP INDEX IF EXISTS {INDEX}"


def on_postgresql(sql: str):
    def run(apps, schema_editor) -> None:
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("generations", "0008_reference_task_and_details"),
    ]

    operations = [
        migrations.RunPython(on_postgresql(CREATE), on_postgresql(DROP)),
    ]
