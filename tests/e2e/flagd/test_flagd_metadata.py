"""flagd-testbed: gherkin/metadata.feature (steps and skips in conftest.py)."""

from pytest_bdd import scenarios

from flagd_support import GHERKIN

scenarios(str(GHERKIN / "metadata.feature"))
