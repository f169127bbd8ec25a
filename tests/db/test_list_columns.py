"""list_jobs names the table's columns one by one (migration 20261128000200): a listed job is
the whole row but its result, and a column of ai_jobs it does not name would be a failure."""

from __future__ import annotations

from tests.support import Db


def _finished_job(db: Db) -> dict[str, object]:
    job = db.new_job(complexity="complex")
    claimed = db.one("claim_job", job_id=job["id"], lease_seconds=60)
    db.one(
        "complete_job",
        job_id=job["id"],
        lease_token=claimed["lease_token"],
        result={"report": "x" * 5000, "facts": list(range(100))},
    )
    return dict(db.one("get_job", job_id=job["id"], user_id="u1"))


def test_a_listed_job_is_its_row_without_the_result(db: Db) -> None:
    finished = _finished_job(db)
    queued = dict(db.new_job(metadata={"source": "console"}))

    listed = db.rows("list_jobs", user_id="u1")

    assert finished["result"] is not None
    assert listed == [queued | {"result": None}, finished | {"result": None}]


def test_list_jobs_answers_every_column_of_the_table_in_its_order(db: Db) -> None:
    db.new_job()
    columns = [
        name
        for (name,) in db.execute(
            "select attname from pg_attribute where attrelid = 'public.ai_jobs'::regclass"
            " and attnum > 0 and not attisdropped order by attnum"
        )
    ]

    (listed,) = db.execute(
        "select array_agg(key order by ordinality)"
        " from public.list_jobs('u1', null, null, 20, null, null) l,"
        " json_each(row_to_json(l)) with ordinality"
    )

    assert listed[0] == columns
