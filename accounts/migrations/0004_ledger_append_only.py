"""The database itself refuses to change or remove ledger entries.

PostgreSQL: a trigger refuses UPDATE and DELETE (TRUNCATE, which test flushes use, still works).
SQLite: a trigger refuses UPDATE; DELETE stays possible because SQLite's test flush uses it.
"""

from django.db import migrations

POSTGRES_UP = """
CREATE OR REPLACE FUNCTION omniweb_ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = 'ledger entries are append-only: ' || TG_OP || ' refused';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON accounts_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION omniweb_ledger_append_only();
"""
POSTGRES_DOWN = """
DROP TRIGGER IF EXISTS ledger_append_only ON accounts_ledgerentry;
DROP FUNCTION IF EXISTS omniweb_ledger_append_only();
"""
SQLITE_UP = """
CREATE TRIGGER ledger_append_only BEFORE UPDATE ON accounts_ledgerentry
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only: UPDATE refused');
END;
"""
SQLITE_DOWN = "DROP TRIGGER IF EXISTS ledger_append_only;"


def run(sql_by_vendor):
    def apply(apps, schema_editor):
        sql = sql_by_vendor.get(schema_editor.connection.vendor)
        if sql:
            schema_editor.execute(sql)

    return apply


class Migration(migrations.Migration):
    dependencies = [("accounts", "0003_ledgerentry_task_ledgerentry_user_and_more")]

    operations = [
        migrations.RunPython(
            run({"postgresql": POSTGRES_UP, "sqlite": SQLITE_UP}),
            run({"postgresql": POSTGRES_DOWN, "sqlite": SQLITE_DOWN}),
        )
    ]
