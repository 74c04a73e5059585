from envconv.recipes.analysis.document import Document


def test_markdown_and_html_hold_the_same_blocks_with_html_escaped():
    doc = Document("A & B")
    doc.heading("sigma <per> layer")
    doc.text("mean 0.83 & max 0.91")
    doc.table(["layer", "sigma"], [["conv1", 0.256], ["layer2.0.conv1", "<0.8>"]])
    doc.image("sigma.png", "a 'quoted' caption")
    md, html = doc.markdown(), doc.html()
    assert md.splitlines()[:4] == ["# A & B", "", "## sigma <per> layer", ""]
    assert "| layer | sigma |\n|---|---|\n| conv1 | 0.256 |\n| layer2.0.conv1 | <0.8> |" in md
    assert "![a 'quoted' caption](sigma.png)" in md
    assert "<title>A &amp; B</title>" in html and "<h2>sigma &lt;per&gt; layer</h2>" in html
    assert "<p>mean 0.83 &amp; max 0.91</p>" in html
    assert "<td>layer2.0.conv1</td><td>&lt;0.8&gt;</td>" in html
    assert "<img src='sigma.png' alt='a &#x27;quoted&#x27; caption'>" in html
    assert doc.images() == ["sigma.png"]
