"""README.md's C++ snippet (the ```cpp block after the line
`<!-- snippet: examples/readme_snippet/main.cpp -->`) is the file that the
build compiles, character for character.

usage: readme_snippet_test.py README.md examples/readme_snippet/main.cpp
"""

import sys

MARKER = "<!-- snippet: examples/readme_snippet/main.cpp -->"


def main():
    readme, source = open(sys.argv[1]).read(), open(sys.argv[2]).read()
    assert MARKER in readme, f"README.md lacks {MARKER}"
    block = readme.split(MARKER, 1)[1].split("```cpp\n", 1)[1].split("```", 1)[0]
    assert block == source, "README.md's snippet differs from examples/readme_snippet/main.cpp"
    print(f"README snippet: {len(block.splitlines())} lines, compiled as examples/readme_snippet")


if __name__ == "__main__":
    main()
