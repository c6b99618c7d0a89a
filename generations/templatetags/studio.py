"""Template helpers of the studio pages."""

from django import template

register = template.Library()


@register.filter
def duration_words(seconds) -> str:
    """12 → "12 s", 130 → "2 min 10 s", 3900 → "1 h 5 min"."""
    try:
        seconds = max(0, int(seconds))
    except (TypeError, ValueError):
        return ""
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@register.filter
def get_item(mapping, key):
    """`mapping[key]` in a template, empty when absent."""
    return mapping.get(key, "") if hasattr(mapping, "get") else ""
