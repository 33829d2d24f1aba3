"""Bodies of `collector indicators`, `collector report`, `collector pool`, `collector verify` and
`collector assets import`.

They read the collector's state (SQLite, WAL: safe while the collector runs) and never change the evidence,
except that a report of a closed month appends its summary to the chain when the collector has not yet.
What needs pydantic (the config, the figures, the register) is imported by the command that uses it, so building
the `collector` parser and `collector verify` load no config model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.evidence import keys
from collector.evidence.records import check_anchor
from collector.indicators import chain, periods
from collector.indicators.pdf import PdfUnavailable, require_chromium
from collector.status import StatusStore

if TYPE_CHECKING:
    from collector.config import CollectorConfig
    from collector.indicators.figures import PeriodResult
    from collector.indicators.pooling import PoolResult


def signer_or_exit(state: Path) -> keys.Signer:
    """The state directory's signing key, created (and its fingerprint told) when there is none yet."""
    try:
        signer, created = keys.init(state)
    except keys.KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if created:
        print(f"note: created the evidence signing key {state / keys.PRIVATE_FILE} (mode 0600); fingerprint "
              f"{keys.show_fingerprint(signer.fingerprint)} (`collector keys show`)", file=sys.stderr)
    return signer


def open_store(cfg: CollectorConfig, state_dir: Path) -> StatusStore:
    """The collector's store, or an empty in-memory one when it never ran here (figures then show no evidence)."""
    db = state_dir / "status.db"
    if not db.exists():
        print(f"note: {db} does not exist (has the collector run with this state_dir?): no evidence yet",
              file=sys.stderr)
        return StatusStore(Path(":memory:"), cfg.indicators.bucket)
    return StatusStore(db, cfg.indicators.bucket)


def _num(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}"


def _width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def _pad(s: str, w: int, right: bool = False) -> str:
    fill = " " * max(0, w - _width(s))
    return fill + s if right else s + fill


def _grid(head: list[str], rows: list[list[str]], numeric: set[int]) -> list[str]:
    widths = [max(_width(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(_pad(c, widths[i], i in numeric) for i, c in enumerate(r)).rstrip() for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_table(result: PeriodResult, lang: str = "zh") -> str:
    """A plain-text table of every figure, enterprise first, then each workshop."""
    from collector.indicators.figures import FIGURE_ORDER, SIMULATED_BANNER, SIMULATED_BANNER_EN
    from collector.indicators.rates import NAMES, pct

    head = ["scope", "figure", "name", "numerator", "denominator", "value", "target", "pass"]
    rows = []
    scopes = [("enterprise", result.figures), *((f"workshop {ws}", f) for ws, f in result.workshops.items())]
    for scope, figs in scopes:
        for f in sorted(figs, key=lambda f: FIGURE_ORDER.index(f.id)):
            zh, en = NAMES[f.id]
            rows.append([scope, f.id, zh if lang == "zh" else en, _num(f.numerator), _num(f.denominator),
                         pct(f.numerator, f.denominator), "" if f.target is None else f"≥ {f.target * 100:g} %",
                         "" if f.passed is None else ("PASS" if f.passed else "FAIL")])
    lines = _grid(head, rows, {3, 4, 5})
    d = result.to_dict(devices=False)
    title = (f"{result.cfg.site.enterprise_name or result.cfg.site.enterprise_id} · period {result.period.label} "
             f"({d['status']}) · defset v1")
    if result.banner:
        banner = f"!!! {SIMULATED_BANNER} / {SIMULATED_BANNER_EN} ({', '.join(result.simulated)}) !!!"
        return "\n".join([banner, title, *lines, banner])
    return "\n".join([title, *lines])


def cmd_indicators(args: argparse.Namespace) -> int:
    from collector.config import effective_state_dir, load_config_or_exit  # builds every protocol's models
    from collector.indicators.figures import compute
    from collector.indicators.rates import pct
    from collector.indicators.register import load_register

    cfg = load_config_or_exit(args.config)
    state = effective_state_dir(cfg)
    warnings: list[str] = []
    assets = load_register(cfg, state, warnings)
    store = open_store(cfg, state)
    now = time.time()
    try:
        period = periods.parse(args.period or "month", now, cfg.site.timezone)
    except ValueError as exc:
        print(f"--period: {exc}", file=sys.stderr)
        return 2
    result = compute(cfg, assets, store, period, now, warnings=warnings)
    store.close()
    if args.json:
        print(json.dumps(result.to_dict(devices=args.devices), ensure_ascii=False, indent=2))
        return 0
    print(format_table(result, args.lang))
    if args.devices:
        print()
        for r in result.devices:
            ev = r.evidence
            cov = pct(ev.good, ev.expected) if ev and ev.expected else "—"
            net = "" if r.verdict is None else ("networked" if r.verdict.networked else r.verdict.code)
            sim = f" 模拟设备 ({r.simulated_reason})" if r.simulated else ""
            print(f"{r.asset.id:<16} {'U' if r.in_universe else '-'} cnc={int(r.asset.is_cnc)} "
                  f"digital={int(r.asset.is_digital)} {cov:>9} {net}{sim}")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for iw in result.identity_warnings:
        print(f"warning: {iw['time']} device {iw['device']} changed identity ({', '.join(iw['changed'])}): "
              + "; ".join(f"{k} {iw['before']['values'].get(k)} -> {iw['after']['values'].get(k)}"
                          for k in iw["changed"]), file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from collector.config import effective_state_dir, load_config_or_exit  # builds every protocol's models
    from collector.indicators.figures import compute
    from collector.indicators.monthly import chain_path, ensure_chained, find_record, month_register
    from collector.indicators.register import load_register
    from collector.indicators.report import report_footer_data, write_package

    cfg = load_config_or_exit(args.config)
    state = effective_state_dir(cfg)
    warnings: list[str] = []
    now = time.time()
    try:
        period = periods.parse(args.period, now, cfg.site.timezone)
    except ValueError as exc:
        print(f"--period: {exc}", file=sys.stderr)
        return 2
    if period.kind == "now":
        print("--period: a report covers a month (YYYY-MM), a year (YYYY) or a day (YYYY-MM-DD)", file=sys.stderr)
        return 2
    formats = [f.strip() for spec in (args.format or ["html"]) for f in spec.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("html", "pdf", "csv", "json")]
    if bad:
        print(f"--format: {', '.join(bad)}: use html, pdf, csv or json", file=sys.stderr)
        return 2
    if "pdf" in formats:  # before anything is computed or chained
        try:
            require_chromium()
        except PdfUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    # a closed period keeps the register that was in force at its end; an open one uses today's
    closed = period.closed(now)
    assets = month_register(cfg, state, period, warnings) if closed else load_register(cfg, state, warnings)
    store = open_store(cfg, state)
    result = compute(cfg, assets, store, period, now, warnings=warnings)
    store.close()
    if not result.measured:
        result.warnings.insert(0, "无采集记录：采集器在本期从未运行，以下数字不是测量结果，不写入证据链 · no collection record: "
                                  "the collector never ran in this period; the figures are not measurements and are "
                                  "not chained")
    record = None
    if period.kind == "month":
        record = find_record(chain_path(state), cfg, period.label)
        if record is None and result.closed and result.measured:
            try:
                record = ensure_chained(result, state, signer_or_exit(state))
            except (chain.ChainKeyError, ValueError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
    try:
        written = write_package(result, Path(args.out), formats, args.lang, record,
                                report_footer_data(cfg, state, period if closed else None, record))
    except PdfUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    if not result.measured:
        print(f"note: period {period.label}: 无采集记录 (no collection record): the collector did not run in it "
              "here; nothing was written to the evidence chain", file=sys.stderr)
    elif not result.closed:
        print(f"note: period {period.label} is not closed yet (closes {periods.iso_local(period.closes, period.tz)});"
              " the figures are provisional and not chained", file=sys.stderr)
    return 0


def _enrolled(args: argparse.Namespace) -> Any:
    """The key `verify` checks against: --key (a public key file or its base64) or --fingerprint."""
    if args.key:
        return keys.load_public(args.key)
    if args.fingerprint:
        return keys.normal_fingerprint(args.fingerprint)
    return None


def cmd_verify(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        print(f"{path}: no such file", file=sys.stderr)
        return 1
    try:
        enrolled = _enrolled(args)
    except keys.KeyFileError as exc:
        print(f"{'--key' if args.key else '--fingerprint'}: {exc}", file=sys.stderr)
        return 2
    result = chain.verify(path, enrolled)
    if result.ok and args.anchor:
        return _verify_anchors(path, args.anchor, enrolled, result)
    if result.ok:
        legacy = (f"; records 1–{result.unsigned} are unsigned (written by an older version) and covered by the "
                  "signed record after them" if result.unsigned and result.keys else "")
        if result.enrolled is not None:
            print(f"{path}: OK, {result.records} record(s), chain intact, every signature verifies, signed by the "
                  f"enrolled key {keys.show_fingerprint(result.enrolled)}{legacy}")
        elif result.keys:
            print(f"{path}: OK, {result.records} record(s), chain intact, signatures consistent with the key(s) the "
                  f"chain introduces ({', '.join(keys.show_fingerprint(k) for k in result.keys)}){legacy}")
            print("note: without --key or --fingerprint this proves no more than that nobody edited it carelessly; "
                  "check against the key the enterprise enrolled", file=sys.stderr)
        else:
            print(f"{path}: OK, {result.records} record(s), chain intact, unsigned (written by an older version)")
        return _verify_hub_anchors(path, args)
    seq = f" (seq {result.broken_seq})" if result.broken_seq is not None else ""
    print(f"{path}: BROKEN at record {result.broken_line}{seq}: {result.reason}; "
          f"{result.records} record(s) before it are intact")
    return 1


def _verify_hub_anchors(path: Path, args: argparse.Namespace) -> int:
    """The hub's receipts kept beside the chain (`hub-receipts.jsonl`, or --hub-receipts): each names a record
    the chain still holds unchanged and, with --hub-key, carries the hub's signature. 0 when all hold (or there
    are none), 1 when one does not, 2 on a bad argument."""
    from collector.evidence import hub_anchors

    kept_file = Path(args.hub_receipts) if args.hub_receipts else path.parent / hub_anchors.HUB_FILE
    if args.hub_receipts and not kept_file.exists():
        print(f"--hub-receipts: {kept_file}: no such file", file=sys.stderr)
        return 2
    try:
        hub_pub = keys.load_public(args.hub_key) if args.hub_key else None
    except keys.KeyFileError as exc:
        print(f"--hub-key: {exc}", file=sys.stderr)
        return 2
    for e in hub_anchors.entries(kept_file):
        if e.get("status") not in hub_anchors.ANCHORING:  # what the hub refused or holds as 数据异常
            print(f"hub receipt: record {e.get('seq')} {e.get('status')} by hub {e.get('hub')} at "
                  f"{e.get('received_at')}: {e.get('reason')}")
    kept = hub_anchors.anchors(kept_file)
    if not kept:
        if args.hub_key:
            print(f"{kept_file}: no hub anchor (receipt) kept yet")
        return 0
    bad = 0
    for e, problem in hub_anchors.check(chain.read(path), kept, hub_pub):
        if problem is None:
            print(f"hub anchor: record {e['seq']} ({str(e['hash'])[:12]}…) {e['status']} by hub {e.get('hub')} at "
                  f"{e.get('received_at')}")
        else:
            bad += 1
            print(f"hub anchor: BROKEN: record {e.get('seq')}: {problem}")
    what = "verify and match the chain" if hub_pub is not None else "match the chain"
    print(f"{path}: {len(kept) - bad} of {len(kept)} hub anchor(s) {what}")
    if hub_pub is None:
        print("note: without --hub-key the receipts' signatures are not checked; give the hub's public key",
              file=sys.stderr)
    return 1 if bad else 0


def _verify_anchors(path: Path, anchor_file: str, enrolled: Any, result: chain.VerifyResult) -> int:
    """`verify --anchor`: anchored heads (JSON, one per line as `mosquitto_sub` saves them) against the chain."""
    try:
        lines = [ln for ln in Path(anchor_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
        messages = [json.loads(ln) for ln in lines]
    except (OSError, ValueError) as exc:
        print(f"--anchor: {anchor_file}: {exc}", file=sys.stderr)
        return 2
    records = chain.read(path)
    pub = None if enrolled is None or isinstance(enrolled, str) else enrolled
    bad = 0
    for i, msg in enumerate(messages, start=1):
        problem = check_anchor(records, msg, pub) if isinstance(msg, dict) else "not a JSON object"
        if problem is None:
            print(f"{anchor_file}:{i}: anchored head seq {msg['seq']} is in the chain")
        else:
            bad += 1
            print(f"{anchor_file}:{i}: BROKEN: {problem}")
    who = f"the enrolled key {keys.show_fingerprint(result.enrolled)}" if result.enrolled else "its own keys"
    print(f"{path}: {result.records} record(s), chain intact, signed by {who}; "
          f"{len(messages) - bad} of {len(messages)} anchor(s) match")
    return 1 if bad else 0


def cmd_keys(args: argparse.Namespace) -> int:
    """`collector keys init|show|rotate`: the evidence signing key of the state directory."""
    from collector.config import effective_state_dir, load_config_or_exit  # builds every protocol's models
    from collector.indicators.monthly import chain_path

    cfg = load_config_or_exit(args.config)
    state = effective_state_dir(cfg)
    try:
        if args.keys_command == "init":
            signer, created = keys.init(state)
            print(f"{'created' if created else 'already there'}: {state / keys.PRIVATE_FILE} (private, mode 0600, "
                  f"keep it out of every copy you hand out), public key {state / keys.PUBLIC_FILE}")
        elif args.keys_command == "rotate":
            old = keys.load(state)
            if old is None:
                print(f"{state}: no key to rotate; `collector keys init -c {args.config}` creates one",
                      file=sys.stderr)
                return 1
            new = keys.Signer(keys.generate())
            chain.rotate(chain_path(state), old, new, enterprise=cfg.site.enterprise_id,
                         workshop=cfg.site.workshop)
            kept = keys.replace(state, new.key)
            print(f"rotated: the chain now introduces key {keys.show_fingerprint(new.fingerprint)} in a record "
                  f"signed by {keys.show_fingerprint(old.fingerprint)}; the old private key is kept as {kept}. "
                  "A running collector signs with the new key from its next minute; give the assessor the new "
                  "fingerprint.")
            signer = new
        else:
            signer_or_none = keys.load(state)
            if signer_or_none is None:
                print(f"{state}: no signing key yet; `collector keys init -c {args.config}` (or `collector run`) "
                      "creates one", file=sys.stderr)
                return 1
            signer = signer_or_none
    except (keys.KeyFileError, chain.ChainKeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"fingerprint: {keys.show_fingerprint(signer.fingerprint)}")
    print(f"public key:  {keys.public_b64(signer.public)}")
    print(f"check with:  collector verify {chain_path(state)} --fingerprint "
          f"{keys.show_fingerprint(signer.fingerprint)}")
    return 0


def format_pool(result: PoolResult, lang: str = "zh") -> str:
    """The pooled figures (Σ numerators / Σ denominators), then one line per enterprise."""
    from collector.indicators.figures import FIGURE_ORDER, SIMULATED_BANNER, SIMULATED_BANNER_EN
    from collector.indicators.rates import NAMES, pct

    n = len(result.enterprises)
    head = ["figure", "name", "numerator", "denominator", "value", "target", "pass", "enterprises passing"]
    rows = []
    for fid in sorted(result.figures, key=FIGURE_ORDER.index):
        f = result.figures[fid]
        zh, en = NAMES[fid]
        rows.append([fid, zh if lang == "zh" else en, _num(f.numerator), _num(f.denominator),
                     pct(f.numerator, f.denominator), "" if f.target is None else f"≥ {f.target * 100:g} %",
                     "" if f.passed is None else ("PASS" if f.passed else "FAIL"),
                     "" if f.target is None else f"{result.passing[fid]} of {n}"])
    lines = [f"pooled · period {result.period} · {n} enterprise(s), "
             f"{sum(len(e.submissions) for e in result.enterprises)} collector(s) · defset v1",
             *_grid(head, rows, {2, 3, 4}), ""]
    shown = [fid for fid in ("D2", "D1") if fid in result.figures]
    ehead = ["enterprise", "county", "collectors", *(f"{fid} ({NAMES[fid][0 if lang == 'zh' else 1]})"
                                                     for fid in shown), "evidence"]
    erows = []
    for e in result.enterprises:
        cells = []
        for fid in shown:
            ef = e.figures.get(fid)
            cells.append("—" if ef is None else f"{_num(ef.numerator)}/{_num(ef.denominator)} "
                         f"{pct(ef.numerator, ef.denominator)} {'PASS' if ef.passed else 'FAIL'}")
        verified = all(s.verified for s in e.submissions)
        erows.append([e.id, e.county or "", str(len(e.submissions)), *cells,
                      "chain verified" if verified else "report JSON (not verifiable)"])
    out = [*lines, *_grid(ehead, erows, set())]
    if result.simulated:
        banner = SIMULATED_BANNER if lang == "zh" else SIMULATED_BANNER_EN
        not_pooled = "不计入汇总" if lang == "zh" else "not pooled"
        out += ["", f"{banner}（{not_pooled}）: " + ", ".join(e.id for e in result.simulated)]
    return "\n".join(out)


def cmd_pool(args: argparse.Namespace) -> int:
    from collector.indicators.pooling import PoolInputError, pool_submissions, read_submissions

    try:
        periods.parse(args.period, time.time(), "UTC")
    except ValueError as exc:
        print(f"--period: {exc}", file=sys.stderr)
        return 2
    subs = []
    for name in args.files:
        try:
            found = read_submissions(Path(name), args.period)
        except PoolInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if not found:
            print(f"warning: {name}: no closed {args.period} in it", file=sys.stderr)
        subs.extend(found)
    result = pool_submissions(args.period, subs, args.county)
    if not result.enterprises:
        print(f"no enterprise has a closed {args.period}" + (f" in county {args.county}" if args.county else "")
              + (" that counts no simulated device (含模拟设备: " + ", ".join(e.id for e in result.simulated) + ")"
                 if result.simulated else ""), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(format_pool(result, args.lang))
    return 0


def cmd_assets_import(args: argparse.Namespace) -> int:
    from collector.config import effective_state_dir, load_config_or_exit  # builds every protocol's models
    from collector.indicators.csv_import import (
        CsvImportError,
        check_against_config,
        install,
        read_register_csv,
    )
    from collector.indicators.monthly import chain_path
    from collector.indicators.register import IMPORTED_REGISTER

    cfg = load_config_or_exit(args.config)
    source = Path(args.file)
    try:
        reg = read_register_csv(source)
    except CsvImportError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        print(f"{source}: {len(exc.lines)} problem(s); nothing imported", file=sys.stderr)
        return 1
    clashes = check_against_config(reg, cfg, str(source))
    for line in clashes:
        print(f"warning: {line}", file=sys.stderr)
    if clashes:
        print(f"{source}: {len(clashes)} row(s) clash with the config, which wins for them (to bind a register row "
              "to a configured device, give it its own 设备编号 and put the device id in 绑定设备)", file=sys.stderr)
    state = effective_state_dir(cfg)
    target = state / IMPORTED_REGISTER
    version = None
    if not args.dry_run:
        version = install(reg, source, target)
        signer = signer_or_exit(state)
        try:
            chain.append(chain_path(state), {"kind": "register_import", **version}, signer,
                         enterprise=cfg.site.enterprise_id, workshop=cfg.site.workshop, now=version["imported_at"])
        except (chain.ChainKeyError, ValueError) as exc:
            print(f"warning: the register is installed, but its version is not in the evidence chain: {exc}",
                  file=sys.stderr)
    cnc = sum(1 for e in reg.entries if e.is_cnc)
    print(f"{source}: {len(reg.entries)} asset(s) OK ({cnc} CNC){'' if args.dry_run else f'; installed as {target}'}")
    if version is not None:
        print(f"register version sha256 {version['sha256'][:16]}…, {version['rows']} row(s); closed months keep "
              "the register they were computed with. A running collector uses it after `collector reload` "
              "(or its next start).")
    if reg.ignored_columns:
        print(f"ignored columns: {', '.join(reg.ignored_columns)}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands of this module, registered by collector.cli.build_parser()."""
    s = sub.add_parser("indicators", help="print 联网率/数控化率 figures (now, today, a month, a year) as a table")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--period", help="now, today, month (default), year, YYYY-MM, YYYY or YYYY-MM-DD")
    s.add_argument("--lang", choices=("zh", "en"), default="zh", help="names of the figures (default zh)")
    s.add_argument("--devices", action="store_true", help="also list every device's coverage and verdict")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(fn=cmd_indicators)

    s = sub.add_parser("report", help="write the evidence package of a period (HTML, PDF, CSV, JSON)")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--period", required=True, help="YYYY-MM (or YYYY, YYYY-MM-DD)")
    s.add_argument("--format", action="append",
                   help="html (default), pdf (printed by headless Chromium), csv, json; repeat or comma-separate")
    s.add_argument("--lang", choices=("zh", "en"), default="zh", help="language of the report (default zh)")
    s.add_argument("--out", default=".", help="folder for report-<period>.<format> (default .)")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("pool", help="county/city figures: pool enterprises' evidence chains or report JSONs")
    s.add_argument("files", nargs="+", help="evidence-chain.jsonl files (verified) or report-<period>.json files")
    s.add_argument("--period", required=True, help="the month to pool, YYYY-MM")
    s.add_argument("--county", help="only enterprises whose site.county is this")
    s.add_argument("--lang", choices=("zh", "en"), default="zh", help="names of the figures (default zh)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(fn=cmd_pool)

    s = sub.add_parser("verify", help="check an evidence chain file: hashes, order, signatures (exit 0 intact, "
                       "1 broken)")
    s.add_argument("file", help="e.g. state/evidence-chain.jsonl")
    who = s.add_mutually_exclusive_group()
    who.add_argument("--key", help="the enrolled public key: evidence-key.pub, or the base64 `keys show` prints")
    who.add_argument("--fingerprint", help="the enrolled key's fingerprint, as `collector keys show` prints it")
    s.add_argument("--anchor", help="anchored heads (JSON lines, e.g. saved with mosquitto_sub from the evidence "
                   "topic) that the chain must still hold")
    s.add_argument("--hub-key", help="the hub's public key (evidence-key.pub or its base64): check the signature "
                   "of every kept hub receipt")
    s.add_argument("--hub-receipts", help="the hub's receipts the collector kept (default: hub-receipts.jsonl "
                   "beside the chain file)")
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("keys", help="the evidence signing key (Ed25519) of the state directory")
    keys_sub = s.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    for name, text in (("init", "create the key pair (mode 0600) unless there is one; print its fingerprint"),
                       ("show", "print the fingerprint and public key an assessor enrols"),
                       ("rotate", "introduce a new key in a record signed by the current one")):
        k = keys_sub.add_parser(name, help=text)
        k.add_argument("-c", "--config", required=True, help="YAML config file")
        k.set_defaults(fn=cmd_keys)

    s = sub.add_parser("assets", help="the asset register (设备台账)")
    assets_sub = s.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    a = assets_sub.add_parser("import", help="import a 设备台账 CSV into the state directory (all rows or none)")
    a.add_argument("file", help="CSV with headers such as 设备编号, 设备名称, 是否数控, 原值")
    a.add_argument("-c", "--config", required=True, help="YAML config file")
    a.add_argument("--dry-run", action="store_true", help="only validate")
    a.set_defaults(fn=cmd_assets_import)
