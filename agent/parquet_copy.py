"""``python -m agent.parquet_copy RESULTS.csv RESULTS.parquet``: a Parquet copy of a results
table, made in its own process so that pyarrow never loads into the runner
(:meth:`agent.run_folder.RunFolder.write_results` calls it when pyarrow is installed).

The column types are read from the CSV (integers, floats, booleans, text); an empty cell is a
null, a column that mixes numbers and text is text.
"""

from __future__ import annotations

import sys


def copy_to_parquet(csv_path: str, parquet_path: str) -> None:
    """Write the CSV table at ``csv_path`` as Parquet at ``parquet_path``."""
    from pyarrow import csv, parquet

    options = csv.ConvertOptions(strings_can_be_null=True, quoted_strings_can_be_null=True)
    parquet.write_table(csv.read_csv(csv_path, convert_options=options), parquet_path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m agent.parquet_copy RESULTS.csv RESULTS.parquet")
    copy_to_parquet(sys.argv[1], sys.argv[2])
