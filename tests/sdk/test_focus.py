"""The chargeback statement in FOCUS 1.0, checked by the FinOps Foundation's own validator."""

import csv
import datetime
import decimal
import io
import os
import subprocess

import openai
import pytest

from conftest import binary


def recent():
    """Ten minutes ago, but not before this month began (so the usage is this month's spend)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return max(now - datetime.timedelta(minutes=10), month_start).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_focus_export_passes_the_validator_and_sums_to_the_ledger(stack, tmp_path):
    validator = os.environ.get("FOCUS_VALIDATOR")
    if not validator:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: FOCUS_VALIDATOR must name the focus-validator (tests/run-all installs it)")
        pytest.skip("*** no FOCUS validator: set FOCUS_VALIDATOR (tests/run-all does) ***")
    key = stack.key("focus", agent="focus-check")
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)
    for model in ["openai/gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-sonnet-4-5"]:
        client.chat.completions.create(model=model, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    # GPU- and core-hours of a job and a month's storage, on the same allocation's statement.
    start = recent()
    records = [
        {"id": f"focus:job:{unit}", "allocation": "focus", "unit": unit, "quantity": quantity,
         "start": start, "end": start, "cluster": "hpc1", "partition": partition}
        for unit, quantity, partition in [("gpu_hour", "2", "h100"), ("core_hour", "10.5", "h100"),
                                          ("gb_month", "5", "scratch")]
    ]
    # A job from last month whose accounting arrives only now: after its billing period closed,
    # so a correction, billed in this month.
    now = datetime.datetime.now(datetime.timezone.utc)
    last_month = (now.replace(day=1) - datetime.timedelta(days=1)).replace(day=15, hour=10, minute=0, second=0, microsecond=0)
    late_start = last_month.strftime("%Y-%m-%dT%H:%M:%SZ")
    records.append({"id": "focus:late-job", "allocation": "focus", "unit": "gpu_hour", "quantity": "1",
                    "start": late_start, "end": late_start, "cluster": "hpc1", "partition": "h100"})
    booked = stack.admin("POST", "/v1/usage", {"records": records})
    assert booked["booked"] == 4
    stack.flush()

    data = stack.directory / "data"
    export = subprocess.run([binary("TOLLGATE_BIN"), "report", "--data", str(data), "--by", "team", "--format", "focus"],
                            check=True, capture_output=True, text=True).stdout
    path = tmp_path / "focus.csv"
    path.write_text(export)
    # The validator reads its currency list relative to the working folder: run it from its
    # own installation.
    checked = subprocess.run([validator, "--data-file", str(path), "--validate-version", "1.0"],
                             capture_output=True, text=True, cwd=os.environ.get("FOCUS_VALIDATOR_CWD"))
    assert checked.returncode == 0 and "Validation succeeded" in checked.stdout, checked.stdout + checked.stderr

    rows = list(csv.DictReader(io.StringIO(export)))
    assert rows and all(r["x_FocusVersion"] == "1.0" for r in rows)
    corrections = [r for r in rows if r["ChargeClass"] == "Correction"]
    assert len(corrections) == 1, corrections
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert corrections[0]["ChargePeriodStart"] == late_start
    assert corrections[0]["BillingPeriodStart"] == month_start
    mine = [r for r in rows if r["SubAccountId"] == "focus" and r["ChargeClass"] != "Correction"]
    tokens = [r for r in mine if r["ServiceCategory"] == "AI and Machine Learning"]
    assert len(tokens) == 3, "one row per model in this hour"
    assert all(r["ConsumedUnit"] == "Tokens" for r in tokens)
    compute = {r["ConsumedUnit"]: r for r in mine if r["ServiceCategory"] == "Compute"}
    assert sorted(compute) == ["Core-Hours", "GPU-Hours"]
    assert compute["GPU-Hours"]["ConsumedQuantity"] == compute["GPU-Hours"]["PricingQuantity"] == "2.000000"
    assert compute["Core-Hours"]["ConsumedQuantity"] == "10.500000"
    assert compute["GPU-Hours"]["Provider"] == "hpc1"
    storage = [r for r in mine if r["ServiceCategory"] == "Storage"]
    assert len(storage) == 1 and storage[0]["ConsumedUnit"] == "GB-Months"
    assert decimal.Decimal(storage[0]["BilledCost"]) == decimal.Decimal("0.05")
    billed = sum(decimal.Decimal(r["BilledCost"]) for r in mine)
    assert billed == decimal.Decimal(stack.spent_nanos("focus")) / decimal.Decimal(10**9)
    events = sum(int(r["x_Events"]) for r in rows)
    assert events == len([e for e in stack.events() if e["allocation"]])


def test_focus_parquet_is_the_same_statement_with_exact_types_and_its_version(stack, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    key = stack.key("focus-parquet", agent="focus-parquet")
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)
    for model in ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5"]:
        client.chat.completions.create(model=model, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    stack.flush()
    data = stack.directory / "data"
    export = subprocess.run([binary("TOLLGATE_BIN"), "report", "--data", str(data), "--by", "team", "--format", "focus"],
                            check=True, capture_output=True, text=True).stdout
    path = tmp_path / "focus.parquet"
    subprocess.run([binary("TOLLGATE_BIN"), "report", "--data", str(data), "--by", "team",
                    "--format", "focus-parquet", "--output", str(path)], check=True, capture_output=True)
    table = pq.read_table(path)
    # Money and quantities are exact decimals, periods UTC instants: never floats. (The FOCUS
    # validator 1.0.0 accepts only float columns as decimal in Parquet, so the validated CSV of
    # the same statement is the reference here, row for row.)
    assert table.schema.field("BilledCost").type == pa.decimal128(38, 9)
    assert table.schema.field("PricingQuantity").type == pa.decimal128(38, 6)
    assert table.schema.field("ChargePeriodStart").type == pa.timestamp("ms", tz="UTC")
    assert pq.ParquetFile(path).metadata.metadata[b"focus_version"] == b"1.0"
    rows = list(csv.DictReader(io.StringIO(export)))
    parquet_rows = table.to_pylist()
    assert len(parquet_rows) == len(rows)
    for text, typed in zip(rows, parquet_rows):
        assert decimal.Decimal(text["BilledCost"]) == typed["BilledCost"]
        assert decimal.Decimal(text["ListCost"]) == typed["ListCost"]
        assert decimal.Decimal(text["PricingQuantity"]) == typed["PricingQuantity"]
        assert text["SubAccountId"] == typed["SubAccountId"]
        assert text["ChargePeriodStart"] == typed["ChargePeriodStart"].strftime("%Y-%m-%dT%H:%M:%SZ")
    mine = [r for r in parquet_rows if r["SubAccountId"] == "focus-parquet"]
    assert sum(r["BilledCost"] for r in mine) == decimal.Decimal(stack.spent_nanos("focus-parquet")) / decimal.Decimal(10**9)
