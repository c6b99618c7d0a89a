"""Nothing outside a gateway's own module speaks that gateway's field names.

A field name written in the wrong place is how a relay ends up sending `duration` to a gateway
that wants `seconds`. The simulator is exempt: it plays the gateways' side. So is the
OpenAI-compatible facade, which speaks OpenAI's own dialect to Omniweb's clients.
"""

import re
from pathlib import Path

from django.conf import settings

# Field name -> the adapter modules that may write it. Words that are also everyday Django or
# HTML names ("size", "seconds", "credits") are left out: they would only produce noise.
FIELDS = {
    "webhook_url": {"omniakey"},
    "estimated_time": {"omniakey", "apimart"},
    "model_id": {"omnivideo"},
    "task_status": {"omnivideo"},
    "image_url": {"omnivideo"},
    "video_url": {"omnivideo", "omixa"},
    "image_urls": {"omnivideo", "apimart"},
    "task_id": {"omnivideo", "apimart"},
    "expires_at": {"apimart"},
    "video_operation": {"omixa"},
    # Also the name of an API token's and a share link's own expiry: allowed there, below.
    "wait_seconds": {"omixa"},
    "poll_interval_seconds": {"omixa"},
    "job_id": {"omixa"},
}


# Omniweb's own fields that happen to share a gateway's name, by the file that may write them.
OWN_FIELDS = {"expires_at": {"accounts/admin.py", "generations/share_admin.py"}}
DIALECTS = {"openai_videos.py"}


def source_files():
    root = Path(settings.BASE_DIR)
    for folder in ("omniweb", "accounts", "generations"):
        for path in (root / folder).rglob("*.py"):
            if "simulator" in path.parts or "migrations" in path.parts or path.name in DIALECTS:
                continue
            yield path


def test_gateway_field_names_stay_in_their_own_modules():
    offenders = []
    for path in source_files():
        text = path.read_text()
        for name, owners in FIELDS.items():
            if path.parent.name == "providers" and path.stem in owners:
                continue
            if str(path.relative_to(settings.BASE_DIR)) in OWN_FIELDS.get(name, ()):
                continue
            if re.search(rf"""["']{name}["']""", text):
                offenders.append(f"{path.relative_to(settings.BASE_DIR)}: {name!r}")
    assert offenders == []


def test_the_check_would_notice_a_field_name_in_the_wrong_module():
    text = Path(settings.BASE_DIR, "generations/providers/apimart.py").read_text()
    assert re.search(r"""["']image_urls["']""", text)
