"""``xdp assets``, ``xdp products`` and ``xdp statements``: the data exchange (issue #17).

Owners register their datasets as assets and list products on them; analysts browse and
subscribe; owners approve; admins settle a billing period; everyone reads their statements.
Failures exit with the codes of ``cli/exit_codes.py`` (an allowance used up is a conflict, 9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from xdp_compute.cli.exit_codes import friendly
from xdp_compute.cli.options import CA, JSON, TIMEOUT, TOKEN, TOKEN_FILE, URL, gateway_client
from xdp_compute.cli.output import as_data, print_json, print_table

assets_app = typer.Typer(no_args_is_help=True, help="Data assets: register a dataset (a release-log entry with "
                                                    "commitments), list them, trace a dataset's versions.")
products_app = typer.Typer(no_args_is_help=True, help="Data products: list, create, subscribe, approve, reject.")


def _money(micros: int) -> str:
    return f"{micros / 1_000_000:,.2f}"


# ---------------------------------------------------------------- assets
@assets_app.command("register")
@friendly
def register(dataset: str = typer.Argument(..., help="Your dataset"),
             description: str = typer.Option(..., help="What the data is, for buyers"),
             licence: str = typer.Option(..., help="Licence terms of use"),
             grade: str = typer.Option(None, help="Your grading of the data (e.g. L1..L4)"),
             url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
             timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Register DATASET as an asset (again after its data changed: the next version). Your nodes
    commit to their rows; nothing of the rows leaves them."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        entry = as_data(c.register_asset(dataset, description, licence, grade=grade))
    if as_json:
        print_json(entry)
        return
    prev = entry.get("previous_index")
    typer.echo(f"registered {entry['datasets'][0]} version {entry['version']} at log index {entry['index']}"
               + (f" (previous version at {prev})" if prev is not None else ""))
    typer.echo(f"content commitment {entry['content_commitment']}\nmetadata commitment {entry['metadata_commitment']}")


@assets_app.command("history")
@friendly
def history(dataset: str = typer.Argument(...), url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE,
            ca: str = CA, timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Every version of DATASET's asset, oldest first (log index, time, commitments)."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        versions = as_data(c.asset_history(dataset))
    if as_json:
        print_json(versions)
        return
    from xdp_compute.cli.jobs import when

    print_table([{"version": v["version"], "log index": v["index"], "previous": v.get("previous_index"),
                  "registered (UTC)": when(v.get("time")), "owner": v["principal"],
                  "content": v["content_commitment"][:16], "metadata": v["metadata_commitment"][:16]}
                 for v in versions],
                ["version", "log index", "previous", "registered (UTC)", "owner", "content", "metadata"])


@assets_app.command("list")
@friendly
def assets_list(url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
                timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """The newest version of every registered asset."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        assets = as_data(c.assets())
    if as_json:
        print_json(assets)
        return
    print_table([{"dataset": a["datasets"][0], "version": a["version"], "owner": a["principal"],
                  "classification": a["asset"].get("classification"), "grade": a["asset"].get("grade"),
                  "log index": a["index"]} for a in assets],
                ["dataset", "version", "owner", "classification", "grade", "log index"], empty="(no assets)")


# ---------------------------------------------------------------- products
@products_app.command("list")
@friendly
def products_list(dataset: str = typer.Option(None, help="Only products on this dataset"),
                  kind: str = typer.Option(None, help="Only this kind: query, scoring, model, lookup"),
                  url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
                  timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """The product catalog as buyers browse it, with your own subscription's state."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        products = as_data(c.products(dataset=dataset, kind=kind))
    if as_json:
        print_json(products)
        return
    rows = []
    for p in products:
        sub = p.get("subscription") or {}
        rows.append({"id": p["id"], "dataset": p["dataset"], "kind": p["kind"], "title": p["title"],
                     "owner": p["owner"], "price": f"{p['unit_price']:g} per {p['unit']}",
                     "allowance": f"{p['allowance_per_subscriber']:g} {p['unit']}",
                     "yours": f"{sub['status']} ({sub['left']:g} left)" if sub else ""})
    print_table(rows, ["id", "dataset", "kind", "title", "owner", "price", "allowance", "yours"],
                empty="(no products)")


def _csv(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


@products_app.command("create")
@friendly
def create(dataset: str = typer.Argument(..., help="Your dataset"),
           kind: str = typer.Option(..., help="query, scoring, model or lookup"),
           title: str = typer.Option(...),
           price: float = typer.Option(..., min=0, help="Price per unit: per epsilon (query), per call (lookup, "
                                                        "model), per row scored (scoring)"),
           allowance: float = typer.Option(..., help="Units per subscriber (epsilon for query, calls for lookup)"),
           description: str = typer.Option(None),
           aggregates: str = typer.Option(None, help="query: allowed aggregates, comma-separated (count,sum,avg,...)"),
           group_by: str = typer.Option(None, help="query: allowed GROUP BY columns, comma-separated"),
           filters: str = typer.Option(None, help="query: columns WHERE may use, comma-separated"),
           columns: str = typer.Option(None, help="query: columns aggregates may read; lookup: columns released"),
           url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
           timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """List a product on DATASET (its terms become a release-log entry)."""
    shapes: dict[str, Any] | None = None
    if kind == "query":
        shapes = {k: v for k, v in {"aggregates": _csv(aggregates), "group_by": _csv(group_by),
                                    "filters": _csv(filters), "columns": _csv(columns)}.items() if v is not None}
    with gateway_client(url, token, token_file, ca, timeout) as c:
        p = as_data(c.create_product(dataset, kind, title, price, allowance, description=description,
                                     shapes=shapes, columns=_csv(columns) if kind != "query" else None))
    if as_json:
        print_json(p)
        return
    typer.echo(f"listed product {p['id']} ({p['kind']} on {p['dataset']}): {p['unit_price']:g} per {p['unit']}, "
               f"{p['allowance_per_subscriber']:g} {p['unit']} per subscriber; log index {p['log_index']}")


@products_app.command("subscribe")
@friendly
def subscribe(product: str = typer.Argument(..., help="The product id (xdp products list)"), url: str = URL,
              token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA, timeout: float = TIMEOUT,
              as_json: bool = JSON) -> None:
    """Ask for a subscription to PRODUCT; it waits for the owner's approval."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        sub = as_data(c.subscribe(product))
    if as_json:
        print_json(sub)
        return
    typer.echo(f"subscription {sub['id']} to {sub['product']} is {sub['status']}")


@products_app.command("subscriptions")
@friendly
def subscriptions(url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
                  timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Your subscriptions (analysts), the subscriptions to your products (holders), or all (auditors)."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        subs = as_data(c.subscriptions())
    if as_json:
        print_json(subs)
        return
    print_table([{**s, "used": f"{s['used']:g}/{s['allowance']:g} {s['unit']}"} for s in subs],
                ["id", "subscriber", "product", "dataset", "kind", "status", "used"], empty="(no subscriptions)")


@products_app.command("approve")
@friendly
def approve(subscription: str = typer.Argument(..., help="The subscription id (xdp products subscriptions)"),
            reason: str = typer.Option(None), url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE,
            ca: str = CA, timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Approve a pending subscription to one of your products."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        sub = as_data(c.approve_subscription(subscription, reason=reason))
    print_json(sub) if as_json else typer.echo(f"subscription {sub['id']} of {sub.get('subscriber')} approved")


@products_app.command("reject")
@friendly
def reject(subscription: str = typer.Argument(...), reason: str = typer.Option(..., help="Why (kept in the log)"),
           url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
           timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Reject a pending subscription to one of your products."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        sub = as_data(c.reject_subscription(subscription, reason))
    print_json(sub) if as_json else typer.echo(f"subscription {sub['id']} of {sub.get('subscriber')} rejected")


# ---------------------------------------------------------------- statements
@friendly
def statements(period: str = typer.Argument(..., help="Billing period, YYYY-MM"),
               settle: bool = typer.Option(False, "--settle", help="Admins: settle the period first (one log "
                                                                   "entry per statement; the period closes)"),
               url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
               timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Settlement statements of PERIOD you may see: what subscribers owe and what holders earn."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        out = as_data(c.settle(period) if settle else c.statements(period))
    if as_json:
        print_json(out)
        return
    if not out:
        typer.echo(f"(no statements for {period})")
    for st in out:
        state = f"settled, log index {st['index']}" if st.get("issued") else "not settled yet"
        typer.echo(f"{st['period']} {st['side']} {st['party']}: total {_money(st['total_micros'])} ({state})")
        print_table([{"product": ln["product"], "dataset": ln["dataset"], "uses": ln["uses"],
                      "units": f"{ln['units']:g} {ln['unit']}", "amount": _money(ln["amount_micros"])}
                     for ln in st["lines"]], ["product", "dataset", "uses", "units", "amount"])
