"""`python -m codeforge_agent`: the same as the `codeforge-agent` console script."""

from codeforge_agent.main import main

main()
