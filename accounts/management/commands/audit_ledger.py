"""Check the whole ledger; exit non-zero on any mismatch (for cron, CI and after incidents)."""

from django.core.management.base import BaseCommand, CommandError

from accounts.ledger import audit
from accounts.models import LedgerEntry


class Command(BaseCommand):
    help = (
        "Audit the credits ledger: cached balances equal the sum of entries, one debit per "
        "task, at most one refund never above its debit, every failed or canceled task "
        "refunded exactly once."
    )

    def handle(self, *args, **options):
        problems = audit()
        for problem in problems:
            self.stderr.write(problem)
        entries = LedgerEntry.objects.count()
        if problems:
            raise CommandError(
                f"Ledger audit failed: {len(problems)} problems in {entries} entries."
            )
        self.stdout.write(self.style.SUCCESS(f"Ledger audit passed: {entries} entries checked."))
