import nbformat

from lab.book import open_cache, store_executed
from lab.paths import source_hash


def notebook():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_an_executed_notebook_is_found_by_its_source(tmp_path):
    source = tmp_path / "ch.ipynb"
    nbformat.write(notebook(), source)
    executed = notebook()
    executed.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    executed.cells[0].execution_count = 1
    folder = tmp_path / "_build" / ".jupyter_cache"
    store_executed(executed, source, folder)
    cache = open_cache(folder)
    _, merged = cache.merge_match_into_notebook(nbformat.read(source, as_version=4))
    assert merged.cells[0].outputs[0]["text"] == "1\n"


def test_the_cache_is_emptied_when_lab_changes(tmp_path):
    folder = tmp_path / "_build" / ".jupyter_cache"
    source = tmp_path / "ch.ipynb"
    nbformat.write(notebook(), source)
    store_executed(notebook(), source, folder)
    stamp = folder.parent / ".jupyter_cache.lab-hash"
    assert stamp.read_text() == source_hash()
    stamp.write_text("another-lab")
    cache = open_cache(folder)
    assert cache.list_cache_records() == []
