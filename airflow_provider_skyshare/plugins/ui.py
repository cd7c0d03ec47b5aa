"""Airflow 3 UI plugin: the fleet (who uses and lends which GPUs) and each task's timeline.

A small FastAPI app mounted by the API server at /skyshare, shown in the UI's navigation
as an external view. Pages render the same views as the `skyshare` CLI, live.

Airflow does not authenticate a plugin's app (a mount inherits none of the core API's
dependencies), so this one does, through Airflow's own security dependencies and the
configured auth manager: every route needs the JWT the UI and the API use (the
`Authorization: Bearer` header, else the UI's `_token` cookie), 401 without one. A task's
timeline needs read access to that task's DAG; the fleet needs the Cluster Activity view.
Both answer 403 otherwise.
"""

from __future__ import annotations

import html
import time
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagAccessEntity
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse

from airflow_provider_skyshare import capacity, charts, metadb, taskpods, views
from airflow_provider_skyshare.fleet import Fleet
from airflow_provider_skyshare.fleetfile import configured, configured_variable, from_variable, load
from airflow_provider_skyshare.links import PREFIX, SkyshareTimelineLink
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.timeline import HEADERS, Timeline


async def authenticated_user(request: Request) -> BaseUser:
    """The caller as Airflow's own routes see them (`security.get_user`): the bearer token wins,
    else the UI's cookie; 401 without either, 401/403 for an expired/invalid one.

    Imported on the first request: workers load plugins too (for macros), and the API
    server's security module pulls in the whole ORM, which a task start need not pay for.
    """
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    return await get_user(request, _oauth_token=None, bearer_credentials=await bearer_scheme(request))


UserDep = Annotated[BaseUser, Depends(authenticated_user)]


def can_read_fleet(request: Request, user: UserDep) -> None:
    """The fleet is the platform's picture (capacity, which org borrows where, queued GPUs per
    org; no DAG or task names), the same kind of thing as Airflow's Cluster Activity view,
    so it needs that view: any Viewer has it, a user with no role does not.
    """
    from airflow.api_fastapi.core_api.security import requires_access_view

    requires_access_view(AccessView.CLUSTER_ACTIVITY)(request, user)


def can_read_task(request: Request, user: UserDep) -> None:
    """A timeline is a task instance's attempts (clusters, pods, exit reasons), so it needs read
    access to that task instance's DAG (the `dag_id` query parameter), decided as Airflow's
    task-instance routes decide it, team of the DAG's bundle included (multi-team). Sync:
    FastAPI runs it in a thread, as the team look-up queries the database.
    """
    from airflow.api_fastapi.core_api.security import requires_access_dag

    requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE)(request, user)


app = FastAPI(title="skyshare", description="GPU fleet shared by several orgs",
              dependencies=[Depends(authenticated_user)])

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.3rem .6rem}
th{background:#f0f4f0;text-align:left}.bad{color:#b00}.lent{color:#a60;font-weight:600}
h1{font-size:1.4rem}h2{font-size:1.1rem}.muted{color:#777;font-size:.85rem}
svg{display:block;max-width:100%;height:auto;margin:.5rem 0 1rem}
"""


def _fleet() -> Fleet:
    from airflow.configuration import conf

    variable = configured_variable(conf.get("skyshare", "fleet_variable", fallback=""))
    if variable:
        return from_variable(variable)
    paths = configured(conf.get("skyshare", "fleet_file", fallback=""))
    if not paths:
        raise ValueError("neither [skyshare] fleet_variable nor fleet_file is set "
                         "(AIRFLOW__SKYSHARE__FLEET_VARIABLE, AIRFLOW__SKYSHARE__FLEET_FILE)")
    return load(paths[0])


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
                    + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _page(title: str, body: str, refresh: int | None = 3) -> HTMLResponse:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return HTMLResponse(f'<!doctype html><html><head><meta charset="utf-8">'
                        f"<title>{html.escape(title)}</title>{meta}"
                        f"<style>{STYLE}</style></head><body>{body}</body></html>")


@app.get("/api/fleet", dependencies=[Depends(can_read_fleet)])
async def api_fleet() -> list[dict[str, Any]]:
    fleet = _fleet()
    return views.fleet_rows(fleet, await capacity.probe(fleet))


@app.get("/", response_class=HTMLResponse, dependencies=[Depends(can_read_fleet)])
async def fleet_page(refresh: int = Query(3, ge=0, le=3600)) -> HTMLResponse:
    """The live fleet, as bars and as a table; `?refresh=0` stops the reload (for printing
    or a screenshot)."""
    try:
        fleet = _fleet()
    except Exception as exc:  # noqa: BLE001 - show the configuration problem on the page
        return _page("skyshare", f"<h1>Skyshare fleet</h1><p class=bad>{html.escape(str(exc))}</p>",
                     refresh)
    rows, classes = [], []
    fleet_rows = views.fleet_rows(fleet, await capacity.probe(fleet))
    for r in fleet_rows:
        lent = ", ".join(f"{n} to {org}" for org, n in sorted(r["lent"].items())) or "-"
        queued = ", ".join(f"{n} {k}" for k, n in sorted(r["queued"].items())) or "-"
        if r["reachable"]:
            rows.append([r["cluster"], r["owner"], r["product"], r["total"], r["free"],
                         r["owner_use"], lent, queued])
            classes.append("lent" if r["lent"] else "")
        else:
            rows.append([r["cluster"], r["owner"], r["product"], "-", "-", "-", "-",
                         f"unreachable: {r['error'][:80]}"])
            classes.append("bad")
    table = _table(["cluster", "owner", "gpu", "total", "free", "owner uses", "lent", "queued"],
                   rows, classes)
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    every = f"refreshes every {refresh} s" if refresh else "no refresh"
    return _page("skyshare fleet", f"<h1>Skyshare fleet</h1>{charts.fleet_svg(fleet_rows)}{table}"
                 f"<p class=muted>fleet file {html.escape(fleet.source)}; live at {stamp} UTC; "
                 f"{every}</p>", refresh)


STORED, LIVE = "finished (XCom)", "live (pods on the clusters)"


async def _timeline(dag_id: str, run_id: str, task_id: str, map_index: int) -> tuple[str, Timeline]:
    stored = metadb.stored_timeline(dag_id, run_id, task_id, map_index)
    if stored:
        return STORED, Timeline.from_list(stored)
    live = await taskpods.live_timeline(_fleet(), TaskIdentity(dag_id, task_id, run_id, map_index),
                                        now=time.time())
    return (LIVE, live) if live else ("not found", Timeline())


@app.get("/api/timeline", dependencies=[Depends(can_read_task)])
async def api_timeline(dag_id: str, run_id: str, task_id: str,
                       map_index: int = Query(-1)) -> dict[str, Any]:
    source, timeline = await _timeline(dag_id, run_id, task_id, map_index)
    return {"source": source, "attempts": timeline.to_list()}


@app.get("/timeline", response_class=HTMLResponse, dependencies=[Depends(can_read_task)])
async def timeline_page(dag_id: str, run_id: str, task_id: str,
                        map_index: int = Query(-1),
                        refresh: int = Query(3, ge=0, le=3600)) -> HTMLResponse:
    """The task's attempts as a chart (one lane per cluster) and, under it, as a table.
    Until the task has finished it reloads every `refresh` seconds (0: never)."""
    source, timeline = await _timeline(dag_id, run_id, task_id, map_index)
    chart = charts.timeline_svg(timeline, now=time.time())
    table = _table(HEADERS, timeline.rows())
    title = f"{dag_id} / {task_id} / {run_id}"
    return _page(f"skyshare timeline {title}",
                 f"<h1>Timeline of {html.escape(title)}</h1><p class=muted>{source}</p>"
                 f"{chart}{table}"
                 f'<p><a href="{PREFIX}/">fleet</a></p>', None if source == STORED else refresh)


class SkysharePlugin(AirflowPlugin):
    name = "skyshare"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "skyshare"}]
    external_views = [{
        "name": "Skyshare fleet", "href": f"{PREFIX}/", "destination": "nav",
        "category": "browse", "url_route": "skyshare",
    }]
    operator_extra_links = [SkyshareTimelineLink()]
