"""Create the first admin account when there is none, printing its password once."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create an admin account with a generated password if no admin exists yet."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options):
        User = get_user_model()
        if admin := User.objects.filter(is_superuser=True).order_by("pk").first():
            self.stdout.write(
                f"An admin account already exists ({admin.username!r}); no new one was created."
            )
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created admin account: username {username!r}, password {password!r}\n"
                "This password is shown only once: write it down or change it after logging in."
            )
        )
