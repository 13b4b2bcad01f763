"""`facecheck serve`, `apikey`, `reviewer`, `audit`, `feedback`: the service and its store."""

from __future__ import annotations

import sys


def _settings(args, **overrides):
    from facecheck.service.settings import ServiceSettings

    return ServiceSettings.from_env(
        data_dir=args.data_dir, database_url=args.database_url, **overrides
    )


def _open_store(args):
    from facecheck.service.store import Store

    return Store(_settings(args).url)


def _operator():
    """Who runs an admin command, for the audit log: the operating-system user."""
    import getpass

    from facecheck.service.audit import Who

    return Who(f"cli:{getpass.getuser()}")


def cmd_serve(args) -> int:
    from facecheck.service.app import serve

    settings = _settings(
        args,
        model=args.model,
        members=args.members,
        fake_above=args.fake_above,
        cases_for_fakes=False if args.no_fake_cases else None,
        retention_days=args.retention_days,
        max_upload_bytes=None if args.max_upload_mb is None else int(args.max_upload_mb * 2**20),
        lease_seconds=args.lease_seconds,
        max_batch=args.max_batch,
        secure_cookies=False if args.insecure_dev else None,
        hsts=True if args.hsts else None,
    )
    print(
        f"facecheck serve: http://{args.host}:{args.port}/docs (API), /review (queue); "
        f"data in {settings.data_dir if not settings.database_url else settings.database_url}",
        file=sys.stderr,
    )
    serve(settings, args.host, args.port)
    return 0


def cmd_apikey(args) -> int:
    store = _open_store(args)
    if args.action == "create":
        key = store.create_api_key(args.name or "unnamed", _operator(), args.expires_days)
        print(key)
        print("(shown once; only its hash is stored)", file=sys.stderr)
    elif args.action == "list":
        for k in store.list_api_keys():
            state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
            if k["expires_at"] and not k["revoked_at"]:
                state += f", expires {k['expires_at']}"
            print(
                f"{k['id']:4d}  {k['prefix']}...  {k['name']:20s} {k['created_at']}  {state}; "
                f"last used {k['last_used_at'] or 'never'}"
            )
    else:
        if not (args.name or "").isdigit():
            raise ValueError("apikey revoke needs the key's id (see `facecheck apikey list`)")
        if not store.revoke_api_key(int(args.name), _operator()):
            raise ValueError(f"no active key with id {args.name}")
        print(f"revoked key {args.name}")
    return 0


def cmd_reviewer(args) -> int:
    import getpass

    from facecheck.service.security import new_token

    store = _open_store(args)
    if args.action == "list":
        for r in store.list_reviewers():
            state = f"disabled {r['disabled_at']}" if r["disabled_at"] else "active"
            print(f"{r['username']:20s} {r['role']:9s} {r['created_at']}  {state}")
        return 0
    if not args.username:
        raise ValueError(f"reviewer {args.action} needs a username")
    if args.action in ("role", "disable", "enable"):
        if args.action == "role" and args.role is None:
            raise ValueError("reviewer role needs --role admin|reviewer|auditor")
        disabled = {"disable": True, "enable": False}.get(args.action)
        store.set_reviewer(args.username, role=args.role, disabled=disabled, who=_operator())
        print(f"reviewer {args.username}: {args.action} done")
        return 0
    if args.generate:
        password = new_token()[:20]
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
    if args.action == "add":
        store.add_reviewer(args.username, password, _operator(), role=args.role or "reviewer")
    else:
        store.set_password(args.username, password, _operator())
    print(f"reviewer {args.username}: " + (password if args.generate else "password set"))
    return 0


def cmd_audit(args) -> int:
    """``audit verify``: the hash chain holds; ``audit export``: JSON lines, verified first."""
    import datetime as dt
    import json

    store = _open_store(args)
    checked = store.verify_audit()
    if not checked.ok:
        print(f"facecheck audit: the chain does not hold: {checked.problem}", file=sys.stderr)
        return 1
    if args.action == "verify":
        print(
            f"audit log intact: {checked.events} events"
            + (f" (#{checked.first_seq}-#{checked.last_seq})" if checked.events else "")
        )
        return 0
    since = None if args.since is None else dt.datetime.fromisoformat(args.since)
    out = sys.stdout if args.out is None else args.out.open("w")
    try:
        n = 0
        for event in store.audit_events(since):
            out.write(json.dumps(event, sort_keys=True) + "\n")
            n += 1
    finally:
        if args.out is not None:
            out.close()
    print(f"exported {n} audit events (chain verified)", file=sys.stderr)
    return 0


def cmd_webhooks(args) -> int:
    from facecheck.service.webhooks import deliveries

    for d in deliveries(_open_store(args), args.limit):
        state = (
            f"delivered {d['delivered_at']}"
            if d["delivered_at"]
            else (f"next try {d['next_attempt_at']}")
        )
        print(
            f"{d['id']:5d}  {d['idempotency_key']:24s} tries {d['attempts']:2d}  "
            f"last {d['last_status'] or '-'}  {state}"
            + (f"  ({d['last_error'][:60]})" if d["last_error"] and not d["delivered_at"] else "")
        )
    return 0


def cmd_feedback(args) -> int:
    from facecheck.service.feedback import agreement, agreement_csv, export

    store = _open_store(args)
    if args.action == "export":
        if args.out is None:
            raise ValueError("feedback export needs --out FOLDER")
        s = export(store, args.out)
        print(
            f"wrote {s.manifest}: {s.exported} reviewed images ({s.real} real, {s.fake} fake); "
            f"{s.without_image} decided cases had no image left (retention)"
        )
        return 0
    rows = agreement(store, args.by)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(agreement_csv(rows))
    print(f"{args.by:10s} {'model':40s} {'decided':>8s} {'fake':>6s} {'agree':>7s}")
    for r in rows:
        print(
            f"{r['period']!s:10s} {r['model_version']!s:40s} {r['decided']:8d} "
            f"{r['decided_fake']:6d} {r['agreement']:7.1%}"
        )
    return 0
