"""Writes the schema registry's resources into infra/shared.yaml from contracts/schemas/.

    python -m scripts.infra_schemas           # rewrite the generated block
    python -m scripts.infra_schemas --check   # exit 1 if the block is out of date

One `AWS::EventSchemas::Schema` per JSON file (Type JSONSchemaDraft4), named
`<source>@<DetailType>` as EventBridge names discovered schemas, its Content the file's JSON
(compact). The block sits between the BEGIN/END GENERATED SCHEMAS markers; everything else
in the template is hand-written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = ROOT / "contracts" / "schemas"
TEMPLATE = ROOT / "infra" / "shared.yaml"
BEGIN = "  # BEGIN GENERATED SCHEMAS (python -m scripts.infra_schemas)\n"
END = "  # END GENERATED SCHEMAS\n"


def logical_id(detail_type: str) -> str:
    return f"Schema{re.sub(r'[^A-Za-z0-9]', '', detail_type)}"


def schema_resources(schema_dir: Path = SCHEMA_DIR) -> str:
    """The generated YAML block (without the markers)."""
    blocks = []
    for path in sorted(schema_dir.glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        source = schema["properties"]["source"]["enum"][0]
        detail_type = schema["properties"]["detail-type"]["enum"][0]
        content = json.dumps(schema, separators=(",", ":"), sort_keys=True, ensure_ascii=True)
        blocks.append(
            f"  {logical_id(detail_type)}:\n"
            f"    Type: AWS::EventSchemas::Schema\n"
            f"    Properties:\n"
            f"      RegistryName: !GetAtt SchemaRegistry.RegistryName\n"
            f"      SchemaName: {source}@{detail_type}\n"
            f"      Type: JSONSchemaDraft4\n"
            f"      Description: {detail_type} from {source} (contracts/schemas/{path.name})\n"
            f"      Content: {json.dumps(content)}\n"
        )
    return "\n".join(blocks)


def render(template_text: str, block: str) -> str:
    start = template_text.index(BEGIN) + len(BEGIN)
    end = template_text.index(END)
    return template_text[:start] + block + template_text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if shared.yaml is stale")
    args = parser.parse_args(argv)
    current = TEMPLATE.read_text(encoding="utf-8")
    wanted = render(current, schema_resources())
    if args.check:
        if wanted != current:
            print("infra/shared.yaml's schemas are stale: run python -m scripts.infra_schemas", file=sys.stderr)
            return 1
        return 0
    TEMPLATE.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
