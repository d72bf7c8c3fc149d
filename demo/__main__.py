"""python -m demo: the whole demo (what `make demo` runs)."""
from demo.run import main

main()
