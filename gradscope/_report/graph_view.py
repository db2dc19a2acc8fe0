"""The report's backward graph: the SVG inline, with pan and zoom, search, and a panel that
shows what a clicked node is. Everything is in the page (no library, no request).

The node data comes from the same drawn (possibly collapsed) graph as the SVG, keyed by the
SVG element ids, so a click or a search always finds the node it shows.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any, Protocol

from .._errors import GradscopeError
from .._graph.dot import format_bytes, format_norm
from .._graph.walk import GraphEdge, GraphNode
from .._text import printable

__all__ = ["GRAPH_CSS", "GRAPH_JS", "graph_section"]


class _HasSvg(Protocol):
    def to_svg(self) -> str: ...


def graph_section(graph: _HasSvg, inline: Any) -> str:
    """The graph's HTML block (``inline`` turns SVG text into SVG safe to paste in HTML)."""
    try:
        svg = inline(graph.to_svg(), "graph")
    except GradscopeError as error:  # no Graphviz renderer here: say so, keep the page
        return (
            '<p class="note-box">A backward graph was captured but could not be drawn: '
            f"{html.escape(printable(str(error)))}</p>"
        )
    drawn = getattr(graph, "drawn", None)
    nodes: dict[str, Any] = {}
    if callable(drawn):
        shown = drawn()
        nodes = node_table(shown.nodes, shown.edges)
    data = json.dumps(nodes, ensure_ascii=True, allow_nan=False).replace("</", "<\\/")
    return f"""<div class="graph-tools">
<input id="graph-search" type="search" placeholder="find a parameter, module or op"
 aria-label="find a parameter, module or op in the graph" autocomplete="off">
<span id="graph-found" class="graph-found"></span>
<button type="button" data-zoom="in" title="zoom in">+</button>
<button type="button" data-zoom="out" title="zoom out">&minus;</button>
<button type="button" data-zoom="fit" title="fit the whole graph">fit</button>
<span class="graph-hint">drag to pan, wheel to zoom, click a node for details</span>
</div>
<div class="graph-wrap"><div class="graph" id="graph-view">{svg}</div>
<aside id="graph-panel" class="graph-panel" aria-live="polite">
<p class="graph-empty">Click a node to see its op, module, shapes, saved bytes and gradient
norm.</p></aside></div>
<script type="application/json" id="graph-data">{data}</script>"""


def _number(v: float | None) -> float | str | None:
    if v is None:
        return None
    return v if math.isfinite(v) else format_norm(v)  # JSON has no NaN/Inf


def node_table(nodes: Sequence[GraphNode], edges: Sequence[GraphEdge]) -> dict[str, Any]:
    """``graph-node-<id>`` -> what the panel shows and the search reads, for every node."""
    by_id = {n.id: n for n in nodes}
    inputs: dict[int, list[GraphNode]] = {}
    for e in sorted(edges, key=lambda e: e.slot):
        inputs.setdefault(e.src, []).append(by_id[e.dst])
    table: dict[str, Any] = {}
    for n in nodes:
        ins = []
        params = list(n.params)
        for child in inputs.get(n.id, ()):
            # a TBackward0-style view in front of a parameter: show the parameter
            through = [c for c in inputs.get(child.id, ()) if c.kind == "parameter"]
            leaf = through[0] if child.kind == "op" and len(through) == 1 else child
            if leaf.kind == "parameter" and leaf.param:
                params.append(leaf.param)
            ins.append(
                {
                    "label": printable(leaf.label),
                    "shape": list(leaf.shape) if leaf.shape is not None else None,
                    "norm": _number(leaf.grad_norm),
                }
            )
        table[f"graph-node-{n.id}"] = {
            "op": printable(n.op),
            "kind": n.kind,
            "module": printable(n.module) if n.module is not None else None,
            "params": [printable(p) for p in params],
            "shape": list(n.shape) if n.shape is not None else None,
            "saved": [
                {
                    "name": printable(s.name),
                    "shape": list(s.shape),
                    "dtype": s.dtype,
                    "bytes": format_bytes(s.nbytes),
                    "parameter": s.is_parameter,
                }
                for s in n.saved
            ],
            "saved_bytes": format_bytes(n.saved_bytes),
            "norm": _number(n.grad_norm),
            "norm_out": _number(n.grad_norm_out),
            "ops": n.ops,
            "inputs": ins,
        }
    return table


GRAPH_CSS = """
.graph-tools{display:flex;gap:6px;align-items:center;margin:4px 0 8px;flex-wrap:wrap}
.graph-tools input{padding:4px 8px;width:280px;border:1px solid var(--line);border-radius:6px}
.graph-tools button{min-width:32px;padding:3px 8px;border:1px solid var(--line);
border-radius:6px;background:var(--soft);cursor:pointer}
.graph-found,.graph-hint{color:var(--muted);font-size:12px}
.graph-wrap{display:flex;gap:8px;align-items:stretch}
.graph-wrap .graph{flex:1;position:relative;overflow:hidden;height:70vh;max-height:none;
cursor:grab;touch-action:none;background:#fff}
.graph-wrap .graph.dragging{cursor:grabbing}
.graph-wrap .graph svg{max-width:none;position:absolute;left:0;top:0;transform-origin:0 0}
.graph-wrap .graph g.node{cursor:pointer}
.graph-wrap .graph g.node.hit path,.graph-wrap .graph g.node.hit polygon{stroke:#d62728;
stroke-width:4}
.graph-wrap .graph g.node.picked path,.graph-wrap .graph g.node.picked polygon{
stroke:#ff7f0e;stroke-width:5}
.graph-panel{width:300px;border:1px solid var(--line);padding:8px 10px;overflow:auto;
height:70vh;font-size:13px;background:var(--soft)}
.graph-panel h3{font-size:14px;margin:0 0 6px;word-break:break-all}
.graph-panel dl{margin:0}.graph-panel dt{color:var(--muted);margin-top:6px}
.graph-panel dd{margin:0;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
word-break:break-all}
"""

# Pan (drag), zoom (wheel, buttons), fit, search (Enter: next match), click to inspect.
GRAPH_JS = """
(function(){
  var view=document.getElementById("graph-view");
  var svg=view&&view.querySelector("svg");
  if(!svg){return;}
  var data=JSON.parse(document.getElementById("graph-data").textContent||"{}");
  var panel=document.getElementById("graph-panel");
  var state={x:0,y:0,s:1};
  function apply(){svg.style.transform="translate("+state.x+"px,"+state.y+"px) scale("+
    state.s+")";}
  function zoomAt(factor,cx,cy){
    var s=Math.min(8,Math.max(0.05,state.s*factor));
    state.x=cx-(cx-state.x)*s/state.s;state.y=cy-(cy-state.y)*s/state.s;state.s=s;apply();
  }
  function fit(){
    var w=svg.width.baseVal.value||svg.getBoundingClientRect().width/state.s;
    var h=svg.height.baseVal.value||svg.getBoundingClientRect().height/state.s;
    var s=Math.min(view.clientWidth/w,view.clientHeight/h,1);
    state.s=s;state.x=(view.clientWidth-w*s)/2;state.y=0;apply();
  }
  view.addEventListener("wheel",function(ev){
    ev.preventDefault();var r=view.getBoundingClientRect();
    zoomAt(ev.deltaY<0?1.2:1/1.2,ev.clientX-r.left,ev.clientY-r.top);
  },{passive:false});
  var drag=null;
  view.addEventListener("pointerdown",function(ev){
    drag={x:ev.clientX,y:ev.clientY,sx:state.x,sy:state.y,moved:false};
    view.classList.add("dragging");
  });
  window.addEventListener("pointermove",function(ev){
    if(!drag){return;}
    var dx=ev.clientX-drag.x,dy=ev.clientY-drag.y;
    if(Math.abs(dx)+Math.abs(dy)>3){drag.moved=true;}
    state.x=drag.sx+dx;state.y=drag.sy+dy;apply();
  });
  window.addEventListener("pointerup",function(){
    view.classList.remove("dragging");setTimeout(function(){drag=null;},0);
  });
  Array.prototype.forEach.call(document.querySelectorAll("[data-zoom]"),function(b){
    b.addEventListener("click",function(){
      var k=b.getAttribute("data-zoom");
      if(k==="fit"){fit();return;}
      zoomAt(k==="in"?1.25:0.8,view.clientWidth/2,view.clientHeight/2);
    });
  });
  function centre(el){
    if(state.s<1){state.s=1;apply();}
    var r=el.getBoundingClientRect(),v=view.getBoundingClientRect();
    state.x+=v.left+v.width/2-(r.left+r.width/2);
    state.y+=v.top+v.height/2-(r.top+r.height/2);apply();
  }
  function text(v){return v===null||v===undefined?"-":String(v);}
  function norm(v){  // as the SVG writes it: 4.37e-02
    if(typeof v!=="number"){return text(v);}
    var p=v.toExponential(2).split("e"),e=parseInt(p[1],10),a=Math.abs(e);
    return p[0]+"e"+(e<0?"-":"+")+(a<10?"0":"")+a;
  }
  function shape(s){return s?"("+s.join(", ")+")":"-";}
  function add(dl,term,value){
    var dt=document.createElement("dt");dt.textContent=term;
    var dd=document.createElement("dd");dd.textContent=value;dl.appendChild(dt);
    dl.appendChild(dd);
  }
  function show(id){
    var d=data[id];if(!d){return;}
    Array.prototype.forEach.call(svg.querySelectorAll("g.node.picked"),function(g){
      g.classList.remove("picked");});
    var el=document.getElementById(id);if(el){el.classList.add("picked");}
    panel.textContent="";
    var h=document.createElement("h3");
    h.textContent=d.kind==="module"?d.op+" ("+d.ops+" ops)":d.op;panel.appendChild(h);
    var dl=document.createElement("dl");panel.appendChild(dl);
    add(dl,"module",text(d.module));
    if(d.kind==="module"){add(dl,"|grad| in / out",norm(d.norm)+" / "+norm(d.norm_out));}
    else{add(dl,"|grad| flowing in",norm(d.norm));}
    add(dl,"saved activations",d.saved_bytes);
    if(d.shape){add(dl,"shape",shape(d.shape));}
    d.saved.forEach(function(s){
      add(dl,"saved "+s.name+(s.parameter?" (parameter)":""),
        shape(s.shape)+" "+s.dtype+", "+s.bytes);
    });
    d.inputs.forEach(function(i,k){
      add(dl,"input "+k+": "+i.label,shape(i.shape)+"  |grad| "+norm(i.norm));
    });
    if(d.params.length){add(dl,"parameters",d.params.join(", "));}
  }
  svg.addEventListener("click",function(ev){
    if(drag&&drag.moved){return;}
    var g=ev.target.closest&&ev.target.closest("g.node");
    if(g&&data[g.id]){show(g.id);}
  });
  var search=document.getElementById("graph-search"),found=document.getElementById("graph-found");
  var hits=[],at=-1;
  function haystack(id){
    var d=data[id];
    return [d.op,d.module||"",d.params.join(" ")].join(" ").toLowerCase();
  }
  function run(){
    var q=search.value.trim().toLowerCase();
    Array.prototype.forEach.call(svg.querySelectorAll("g.node.hit"),function(g){
      g.classList.remove("hit");});
    hits=[];at=-1;
    if(!q){found.textContent="";return;}
    Object.keys(data).forEach(function(id){
      if(document.getElementById(id)&&haystack(id).indexOf(q)>=0){hits.push(id);}
    });
    hits.forEach(function(id){document.getElementById(id).classList.add("hit");});
    found.textContent=hits.length+" found";
    next();
  }
  function next(){
    if(!hits.length){return;}
    at=(at+1)%hits.length;centre(document.getElementById(hits[at]));show(hits[at]);
    found.textContent=(at+1)+" of "+hits.length;
  }
  search.addEventListener("input",run);
  search.addEventListener("keydown",function(ev){if(ev.key==="Enter"){ev.preventDefault();next();}});
  fit();
})();
"""
