"""PostgreSQL only: notebook text is split at punctuation before it is indexed.

The English parser reads `scipy.signal.butter` or `np.arange(3)` as one host- or file-like
token, so a search for `butter` or `arange` would not find the notebook that uses them.
Titles and summaries are prose and keep the parser's own rules.
"""

from django.db import migrations

OLD = (
    "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(summary, '')), 'B') || "
    "setweight(to_tsvector('english', coalesce(search_text, '')), 'C')"
)
NEW = (
    "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(summary, '')), 'B') || "
    "setweight(to_tsvector('english', "
    "regexp_replace(coalesce(search_text, ''), '[^[:alnum:]]+', ' ', 'g')), 'C')"
)


def _vector(schema_editor, expression: str) -> None:  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("ALTER TABLE gallery_example DROP COLUMN IF EXISTS search_vector")
    schema_editor.execute(
        f"ALTER TABLE gallery_example ADD COLUMN search_vector tsvector "
        f"GENERATED ALWAYS AS ({expression}) STORED")
    schema_editor.execute("CREATE INDEX example_search_vector ON gallery_example "
                          "USING gin (search_vector) WITH (fastupdate = off)")


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    _vector(schema_editor, NEW)


def backwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    _vector(schema_editor, OLD)


class Migration(migrations.Migration):
    dependencies = [("gallery", "0004_search_head_vector")]
    operations = [migrations.RunPython(forwards, backwards)]
