"""flagd-testbed: gherkin/contextEnrichment.feature (steps and skips in conftest.py)."""

from pytest_bdd import scenarios

from flagd_support import GHERKIN

scenarios(str(GHERKIN / "contextEnrichment.feature"))
