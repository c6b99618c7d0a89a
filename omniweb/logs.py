"""Log records as JSON lines, for production log collectors.

Engine lines are written as `event=submitted task=12 gateway=apimart key=3`; those pairs
become fields of their own, so a collector can filter on `task` or `gateway` directly.
"""

import json
import logging
import re
from datetime import UTC, datetime

PAIR = re.compile(r"(\w+)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if message.startswith("event="):
            for name, value in PAIR.findall(message):
                entry.setdefault(name, value.strip("'\""))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
