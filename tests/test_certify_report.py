"""The versioned certify report: to_dict() validates against report.schema.json and is plain JSON."""

from __future__ import annotations

import json

import pytest
import torch
from certify_nets import D, mlp

from speccert.bounds import certify
from speccert.bounds.schema import SCHEMA_VERSION, load_schema, validate_report
from speccert.errors import InputError
from speccert.ir import INPUT, Graph, Linear, Node

pytest.importorskip("jsonschema")


def test_report_validates_and_round_trips_through_json() -> None:
    torch.manual_seed(0)
    g = mlp("tanh", d=12, c=5)
    x = torch.rand(30, 12, dtype=D)
    y = torch.randint(0, 5, (30,))
    rep = certify(g, (x, y), eps=[0.0, 0.01, 0.1], second_order=True, audit=5)
    d = json.loads(json.dumps(rep.to_dict()))  # plain JSON types only
    validate_report(d)
    assert d["schema_version"] == SCHEMA_VERSION
    assert set(d) >= {"model", "layers", "lipschitz", "certificate", "samples", "timing", "environment"}
    cert = d["certificate"]
    assert cert["certified_accuracy"][0] == pytest.approx(cert["clean_accuracy"])  # eps = 0
    assert sum(cert["wins"].values()) == 30 and set(cert["kinds"]) == {
        "global",
        "pairwise",
        "margin",
        "second_order",
    }
    assert len(d["samples"]) == 30 and d["samples"][3]["index"] == 3
    for s in d["samples"]:
        assert (s["certificate"] is None) == (s["radius"] == 0)
        assert s["radius"] == max(s["radii"].values())
    assert d["lipschitz"]["ratio"] == pytest.approx(d["lipschitz"]["upper"] / d["lipschitz"]["lower"])
    assert [layer["name"] for layer in d["layers"]] == ["l1", "l2", "l3"]
    assert d["environment"]["method"] == "auto" and d["environment"]["torch"] == torch.__version__
    assert validate_report(rep.to_dict(samples=False)) is None


def test_infinite_radius_is_null_and_still_valid() -> None:
    """A constant classifier (zero weights) is robust everywhere: radius inf, written as null."""
    g = Graph(
        (3,),
        [Node("l", Linear(torch.zeros(2, 3, dtype=D), torch.tensor([1.0, 0.0], dtype=D)), (INPUT,))],
        dtype=D,
    )
    rep = certify(
        g, (torch.rand(4, 3, dtype=D), torch.zeros(4, dtype=torch.long)), eps=[1e6], lower_bound=False
    )
    d = rep.to_dict()
    validate_report(d)
    assert d["certificate"]["certified_accuracy"] == [1.0]
    assert all(s["radius"] is None for s in d["samples"])


def test_schema_rejects_a_broken_report() -> None:
    assert load_schema()["properties"]["schema_version"]["pattern"].startswith("^1")
    torch.manual_seed(0)
    g = mlp("relu", d=12, c=5)
    d = certify(
        g, (torch.rand(5, 12, dtype=D), torch.zeros(5, dtype=torch.long)), lower_bound=False
    ).to_dict()
    del d["certificate"]["median_radius"]
    with pytest.raises(InputError, match="median_radius"):
        validate_report(d)
