"""The admin dashboard page: behaviour per gateway and key, spend, and reconciliation for a
chosen period, with SVG charts and the same numbers in tables."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from generations import providers
from generations.insight import charts, dashboard
from generations.insight.access import staff_only


# Signed-out visitors are sent to log in, as everywhere; members are told there is nothing here.
@staff_only
def dashboard_page(request: HttpRequest) -> HttpResponse:
    period, problem = dashboard.choose_period(request.GET)
    gateways, keys = dashboard.behaviour(period)
    spend = dashboard.spend(period)
    models = dashboard.model_costs(period)
    reconciliation = dashboard.reconciliation(period)
    days = [row for _day, row in spend.days]
    credits_chart = charts.bar_chart(
        "Credits per day",
        f"Credits debited and refunded each day, {period.label}.",
        [f"{day:%d}" for day, _row in spend.days],
        [
            charts.Series("debited", "chart-debit", [row.debited for row in days]),
            charts.Series("refunded", "chart-refund", [row.refunded for row in days]),
        ],
    )
    outcomes_chart = charts.bar_chart(
        "Tasks per gateway by outcome",
        f"Succeeded, failed and other tasks per gateway, {period.label}.",
        [row.name for row in gateways],
        [
            charts.Series("succeeded", "chart-succeeded", [row.succeeded for row in gateways]),
            charts.Series("failed", "chart-failed", [row.failed for row in gateways]),
            charts.Series(
                "other",
                "chart-other",
                [row.tasks - row.succeeded - row.failed for row in gateways],
            ),
        ],
        stacked=True,
    )
    return render(
        request,
        "insight/dashboard.html",
        {
            "period": period,
            "problem": problem,
            "periods": dashboard.PERIODS,
            # What was typed stays in the fields, even when refused, so it can be corrected.
            "custom_from": request.GET.get("from") or period.first_day.isoformat(),
            "custom_to": request.GET.get("to") or period.last_day.isoformat(),
            "max_days": dashboard.MAX_CUSTOM_DAYS,
            "gateways": gateways,
            "keys": keys,
            "spend": spend,
            "models": models,
            "gateway_costs": dashboard.gateway_costs(models),
            "reconciliation": reconciliation,
            "tolerance": f"{dashboard.COST_TOLERANCE:.0%}",
            "reporting": [providers.REGISTRY[pid].name for pid in dashboard.REPORTS_COST],
            "credits_chart": credits_chart,
            "outcomes_chart": outcomes_chart,
        },
    )
