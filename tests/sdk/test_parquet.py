"""The Parquet the gateway writes, read as data teams read it: pyarrow and DuckDB."""

import decimal

import duckdb
import openai
import pyarrow.dataset as ds


def test_parquet_files_hold_every_event_once_and_sum_to_the_budget_table(stack):
    key = stack.key("parquet", agent="parquet-check")
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)
    for n in range(1, 8):
        client.chat.completions.create(
            model="openai/gpt-4o-mini", max_tokens=n, messages=[{"role": "user", "content": "count"}])
    # The admin flush syncs the log and writes it out, as the roll timer would.
    stack.flush()

    data = stack.parquet_dir()
    table = ds.dataset(str(data), format="parquet", partitioning="hive").to_table()
    events = stack.events()
    assert table.num_rows == len(events), "every logged event is in the files, once"
    assert len(set(table.column("event_id").to_pylist())) == table.num_rows
    assert str(table.schema.field("cost").type) == "decimal128(38, 9)"

    mine = table.filter(ds.field("agent") == "parquet-check")
    assert mine.num_rows == 7
    assert sorted(mine.column("tokens_out").to_pylist()) == list(range(1, 8))

    # DuckDB over the same files: the exact decimal total equals the live budget table.
    glob = str(data / "**" / "*.parquet")
    total, rows = duckdb.sql(
        f"select sum(cost), count(*) from read_parquet('{glob}', hive_partitioning = true) "
        "where allocation = 'parquet'").fetchall()[0]
    spent = decimal.Decimal(stack.spent_nanos("parquet")) / decimal.Decimal(10**9)
    assert total == spent
    assert rows >= 7
    by_hour = duckdb.sql(
        f"select date, hour, count(*) from read_parquet('{glob}', hive_partitioning = true) group by all").fetchall()
    assert sum(n for _, _, n in by_hour) == len(events)
