"""PostgreSQL only: a small stored tsvector of title and summary, to rank search results,
and a GIN index without a pending list.

Ranking over the whole notebook text means reading every match's large vector; the head
vector is a few dozen lexemes, so ordering thousands of matches stays cheap. Filtering still
uses the GIN-indexed `search_vector`.
"""

from django.db import migrations

HEAD = (
    "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(summary, '')), 'B')"
)


def add_head(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"ALTER TABLE gallery_example ADD COLUMN search_head tsvector "
        f"GENERATED ALWAYS AS ({HEAD}) STORED")
    # Examples change rarely and are searched all the time: write straight into the GIN
    # index rather than into a pending list that every search must scan until a vacuum.
    schema_editor.execute("ALTER INDEX example_search_vector SET (fastupdate = off)")
    schema_editor.execute("SELECT gin_clean_pending_list('example_search_vector'::regclass)")


def drop_head(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("ALTER INDEX example_search_vector RESET (fastupdate)")
    schema_editor.execute("ALTER TABLE gallery_example DROP COLUMN IF EXISTS search_head")


class Migration(migrations.Migration):
    dependencies = [("gallery", "0003_job_rung_at")]
    operations = [migrations.RunPython(add_head, drop_head)]
