package batch

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/periocular/atm-agent/agent/identity"
)

// SchemaVersion is the version of report.json's layout.
const SchemaVersion = 1

// Report is report.json. It holds no timestamps or durations, so that the
// same inputs give a byte-identical file.
type Report struct {
	Schema     int          `json:"schema"`
	Meta       Meta         `json:"run"`
	Counts     Counts       `json:"counts"`
	Identities []Identity   `json:"identities"`
	Images     []ImageEntry `json:"images"`
	Skipped    []Problem    `json:"skipped"`
	Unreadable []Problem    `json:"unreadable"`

	elapsed, embedTime time.Duration
	linked, copied     int
}

// Elapsed is the wall time of the run and of its perception stage.
func (r *Report) Elapsed() (total, embed time.Duration) { return r.elapsed, r.embedTime }

// Placed says how many files were hard-linked and how many copied.
func (r *Report) Placed() (linked, copied int) { return r.linked, r.copied }

// Meta describes how the run was made.
type Meta struct {
	Version    string               `json:"version"`
	Input      string               `json:"input"`
	InputB64   string               `json:"input_b64,omitempty"` // Input's bytes when not valid UTF-8 (see rawName)
	Detector   string               `json:"detector"`
	Embedder   string               `json:"embedder"`
	Crop       string               `json:"crop"`
	Models     []ModelInfo          `json:"models"`
	Algorithm  string               `json:"algorithm"`
	Thresholds *identity.Thresholds `json:"thresholds,omitempty"`
	Eps        float64              `json:"eps,omitempty"`
	MinSamples int                  `json:"min_samples,omitempty"`
	Singletons string               `json:"singletons"`
	Distance   string               `json:"distance"`
	// Corrections says what --apply made of the analyst's corrections.
	Corrections *CorrectionStats `json:"corrections,omitempty"`
}

// ModelInfo names a model's files by checksum: the weights, and the
// second file of the formats that have one (Caffe's deploy.prototxt).
type ModelInfo struct {
	Name         string `json:"name"`
	SHA256       string `json:"sha256"`
	ConfigSHA256 string `json:"config_sha256,omitempty"`
}

// Counts sum up a run. Identities = People (2+ images) + Singletons.
type Counts struct {
	Images     int `json:"images"`           // items: image files and sampled video frames
	Videos     int `json:"videos,omitempty"` // video files sampled
	Faces      int `json:"faces"`
	NoFace     int `json:"noface"`
	Unreadable int `json:"unreadable"`
	Skipped    int `json:"skipped"`
	Identities int `json:"identities"`
	People     int `json:"people"`
	Singletons int `json:"singletons"`
}

// Identity is one person found.
type Identity struct {
	Folder       string   `json:"folder"`
	Name         string   `json:"name,omitempty"` // given in corrections
	Size         int      `json:"size"`
	Masked       int      `json:"masked"`
	Unmasked     int      `json:"unmasked"`
	MeanDistance float64  `json:"mean_distance"`
	MaxDistance  float64  `json:"max_distance"`
	Images       []string `json:"images"`
	// ImagesB64, present only when one of Images is not valid UTF-8, is
	// parallel to Images: each name's bytes (see rawName), "" for a valid one.
	ImagesB64 []string `json:"images_b64,omitempty"`
	// Maybe are near-miss suggestions: other identities just beyond the
	// algorithm's cut, closest first (see NearFactor).
	Maybe []Suggestion `json:"maybe,omitempty"`
	idx   []int
}

// Suggestion names another identity that may be the same person.
type Suggestion struct {
	Folder   string  `json:"folder"`
	Image    string  `json:"image,omitempty"`     // the one image, when Folder is singletons
	ImageB64 string  `json:"image_b64,omitempty"` // Image's bytes when not valid UTF-8 (see rawName)
	Distance float64 `json:"distance"`            // cosine distance between the identities' mean templates
	rank     int
}

// ImageEntry is one input image. Folder is the identity folder, "noface",
// or empty for an unreadable file.
type ImageEntry struct {
	Path    string `json:"path"`
	PathB64 string `json:"path_b64,omitempty"` // Path's bytes when not valid UTF-8 (see rawName)
	Folder  string `json:"folder"`
	File    string `json:"file,omitempty"`     // name inside Folder
	FileB64 string `json:"file_b64,omitempty"` // File's bytes when not valid UTF-8 (see rawName)
	// FaceNo, with --faces all, is which face of the image this entry is
	// (1-based, reading order); an image with several faces has one entry
	// per face, each with its own folder.
	FaceNo int `json:"face_no,omitempty"`
	// Key names the face in corrections: the file's sha256 (and face_no).
	Key  string `json:"key,omitempty"`
	Note string `json:"note,omitempty"`
	// Face is present when a usable face was found.
	Face *FaceInfo `json:"face,omitempty"`
	// Video is present when the item is a frame sampled from a video
	// (Path is then "VIDEO#t=SECONDS").
	Video *FrameInfo `json:"video,omitempty"`
}

// FrameInfo says where in a video a sampled frame is.
type FrameInfo struct {
	Path    string  `json:"path"`               // the video, relative to the input
	PathB64 string  `json:"path_b64,omitempty"` // Path's bytes when not valid UTF-8 (see rawName)
	Frame   int     `json:"frame"`              // index of the frame in the video, from 0
	Time    float64 `json:"time"`               // seconds from the start
}

// FaceInfo is what was measured on an image's face.
type FaceInfo struct {
	Distance  float64    `json:"distance"` // to the identity's centroid, see DistanceDoc
	Mask      string     `json:"mask"`     // masked, unmasked or unknown
	MaskScore float64    `json:"mask_score"`
	Quality   float64    `json:"quality"`
	DetScore  float64    `json:"det_score"`
	Box       [4]float64 `json:"box"` // x0, y0, x1, y1 in image pixels
	Thumb     string     `json:"thumb,omitempty"`
}

// rawName is the standard base64 of name's bytes when name is not valid
// UTF-8, else "". encoding/json writes U+FFFD for every invalid byte, so
// such a file name in report.json no longer finds the file (and two names
// may read the same); the *_b64 field next to it holds the exact bytes.
// Only names of valid UTF-8 (nearly all) leave the report as it was.
func rawName(name string) string {
	if utf8.ValidString(name) {
		return ""
	}
	return base64.StdEncoding.EncodeToString([]byte(name))
}

// rawNames sets the *_b64 field of every file name in rep (see rawName).
func rawNames(rep *Report) {
	rep.Meta.InputB64 = rawName(rep.Meta.Input)
	for i := range rep.Identities {
		id := &rep.Identities[i]
		id.ImagesB64 = nil
		for k, p := range id.Images {
			if b := rawName(p); b != "" {
				if id.ImagesB64 == nil {
					id.ImagesB64 = make([]string, len(id.Images))
				}
				id.ImagesB64[k] = b
			}
		}
		for k := range id.Maybe {
			id.Maybe[k].ImageB64 = rawName(id.Maybe[k].Image)
		}
	}
	for i := range rep.Images {
		e := &rep.Images[i]
		e.PathB64, e.FileB64 = rawName(e.Path), rawName(e.File)
		if e.Video != nil {
			e.Video.PathB64 = rawName(e.Video.Path)
		}
	}
	for _, ps := range [][]Problem{rep.Skipped, rep.Unreadable} {
		for i := range ps {
			ps[i].PathB64 = rawName(ps[i].Path)
		}
	}
}

// DistanceDoc explains ImageEntry.Distance.
const DistanceDoc = "cosine distance to the L2-normalised mean of the identity's templates (0 for a single image)"

// write lays out the folders and writes the reports.
func write(root, out string, rep *Report, res []result, o Options) error {
	rep.Schema = SchemaVersion
	rep.Meta.Distance = DistanceDoc
	names := map[string]namer{}
	placed := map[string]string{} // folder/path -> file name
	placeIn := func(i int, folder string) error {
		dir := filepath.Join(out, folder)
		if names[folder] == nil {
			names[folder] = namer{}
			if err := os.MkdirAll(dir, outDirMode); err != nil {
				return err
			}
		}
		e := &rep.Images[i]
		if f, ok := placed[folder+"/"+e.Path]; ok {
			e.File = f // another face of the same image, same person
			return nil
		}
		src, name := filepath.Join(root, filepath.FromSlash(e.Path)), flatName(e.Path)
		if fr, ok := o.frames[e.Path]; ok {
			src, name = fr.file, name+".jpg" // the sampled frame, as a JPEG
		}
		e.File = names[folder].take(name)
		placed[folder+"/"+e.Path] = e.File
		linked, err := place(src, filepath.Join(dir, e.File), o.Link)
		if err != nil {
			return fmt.Errorf("place %s: %w", e.Path, err)
		}
		if linked {
			rep.linked++
		} else {
			rep.copied++
		}
		return nil
	}
	for _, id := range rep.Identities {
		for _, i := range id.idx {
			if err := placeIn(i, id.Folder); err != nil {
				return err
			}
		}
	}
	for i := range rep.Images {
		if rep.Images[i].Folder == "noface" {
			if err := placeIn(i, "noface"); err != nil {
				return err
			}
		}
	}
	if o.Thumb > 0 {
		made := false
		for i, r := range res {
			if !r.found || len(r.face.Thumb) == 0 || rep.Images[i].Face == nil {
				continue
			}
			if !made {
				if err := os.MkdirAll(filepath.Join(out, "thumbs"), outDirMode); err != nil {
					return err
				}
				made = true
			}
			name := fmt.Sprintf("%06d.jpg", i+1)
			if err := os.WriteFile(filepath.Join(out, "thumbs", name), r.face.Thumb, outFileMode); err != nil {
				return fmt.Errorf("write thumbnail: %w", err)
			}
			rep.Images[i].Face.Thumb = path.Join("thumbs", name)
		}
	}
	rawNames(rep)
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "report.json"), append(js, '\n'), outFileMode); err != nil {
		return fmt.Errorf("write report.json: %w", err)
	}
	if len(rep.Unreadable) > 0 {
		// JSON, not lines of path<TAB>reason: a file name may hold tabs
		// and newlines.
		b, err := json.MarshalIndent(rep.Unreadable, "", "  ")
		if err != nil {
			return fmt.Errorf("encode unreadable.json: %w", err)
		}
		if err := os.WriteFile(filepath.Join(out, "unreadable.json"), append(b, '\n'), outFileMode); err != nil {
			return fmt.Errorf("write unreadable.json: %w", err)
		}
	}
	var h bytes.Buffer
	if err := sheet.Execute(&h, sheetData(rep, root)); err != nil {
		return fmt.Errorf("render report.html: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, "report.html"), h.Bytes(), outFileMode); err != nil {
		return fmt.Errorf("write report.html: %w", err)
	}
	return nil
}

type sheetFace struct {
	ImageEntry
	Maybe    []Suggestion // a singleton's suggestions
	Href     template.URL // the placed copy inside OUT
	Original template.URL // the input file (file:// URL)
}

type sheetIdentity struct {
	Identity
	Faces []sheetFace
}

type sheetView struct {
	R          *Report
	Folders    []string // person folders: targets of moves and merges
	Singles    []string // singletons' image paths: targets too, as "singletons/PATH"
	Identities []sheetIdentity
	NoFace     []sheetFace
}

// relURL escapes each segment of a relative slash path for an href.
func relURL(p string) template.URL {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return template.URL(strings.Join(parts, "/"))
}

func fileURL(abs string) template.URL {
	return template.URL((&url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}).String())
}

func sheetData(r *Report, root string) sheetView {
	v := sheetView{R: r}
	singles := map[string]bool{}
	for _, id := range r.Identities {
		if id.Folder != "singletons" {
			v.Folders = append(v.Folders, id.Folder)
		} else if len(id.Images) > 0 && !singles[id.Images[0]] {
			singles[id.Images[0]] = true
			v.Singles = append(v.Singles, id.Images[0])
		}
	}
	face := func(i int) sheetFace {
		e := r.Images[i]
		f := sheetFace{ImageEntry: e, Original: fileURL(filepath.Join(root, filepath.FromSlash(e.Path)))}
		if e.Video != nil {
			// The video at the frame's time (a media fragment).
			f.Original = fileURL(filepath.Join(root, filepath.FromSlash(e.Video.Path))) + template.URL(fmt.Sprintf("#t=%.3f", e.Video.Time))
		}
		if e.File != "" {
			f.Href = relURL(e.Folder + "/" + e.File)
		}
		return f
	}
	single := -1 // the one section for all of singletons/
	for _, id := range r.Identities {
		if id.Folder == "singletons" && single >= 0 {
			si := &v.Identities[single]
			si.Size += id.Size
			si.Masked += id.Masked
			si.Unmasked += id.Unmasked
			for _, i := range id.idx {
				f := face(i)
				f.Maybe = id.Maybe
				si.Faces = append(si.Faces, f)
			}
			continue
		}
		si := sheetIdentity{Identity: id}
		for _, i := range id.idx {
			f := face(i)
			if id.Folder == "singletons" {
				f.Maybe = id.Maybe
				si.Maybe = nil
			}
			si.Faces = append(si.Faces, f)
		}
		if id.Folder == "singletons" {
			single = len(v.Identities)
		}
		v.Identities = append(v.Identities, si)
	}
	for i, e := range r.Images {
		if e.Folder == "noface" {
			v.NoFace = append(v.NoFace, face(i))
		}
	}
	return v
}

// plural is "1 image", "2 images", "1 person", "3 people".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// sheet is the offline contact sheet: no external resources (thumbnails
// are files under thumbs/, CSS and the one inline script are in the page);
// html/template escapes every name. The script only sorts and filters what
// is on the page.
var sheet = template.Must(template.New("sheet").Funcs(template.FuncMap{
	"dist":   func(d float64) string { return fmt.Sprintf("%.3f", math.Max(0, d)) },
	"plural": plural,
	"lower":  strings.ToLower,
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>atm-tools cluster report</title>
<style>
body{font-family:sans-serif;margin:1em;color:#222}
section{margin:1.5em 0}
h2{font-size:1.1em;margin:.3em 0}
.grid{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:104px;font-size:11px;text-align:center}
figure img{width:96px;height:96px;object-fit:cover;display:block;margin:auto;background:#ddd}
figcaption{overflow-wrap:anywhere}
.b{display:inline-block;padding:0 4px;border-radius:3px;color:#fff;font-size:10px}
.masked{background:#b35806}.unmasked{background:#1b7837}.unknown{background:#777}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
#toc{columns:4 12em;font-size:12px;padding:0;list-style:none}
#tools{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #ccc}
.hidden{display:none}
.maybe{color:#8a4b00;font-size:12px}
</style>
</head>
<body>
<h1>atm-tools cluster report</h1>
<p>{{plural .R.Counts.Images "image" "images"}}, {{plural .R.Counts.Faces "face" "faces"}}: {{plural .R.Counts.People "person" "people"}} seen in 2 or more images, {{plural .R.Counts.Singletons "person" "people"}} seen once, {{.R.Counts.NoFace}} without a usable face, {{.R.Counts.Unreadable}} unreadable, {{.R.Counts.Skipped}} skipped.</p>
<p>Algorithm {{.R.Meta.Algorithm}}{{with .R.Meta.Thresholds}} (thresholds uu {{.UU}}, mm {{.MM}}, mu {{.MU}}){{end}}{{if .R.Meta.MinSamples}} (eps {{.R.Meta.Eps}}, min_samples {{.R.Meta.MinSamples}}){{end}}; detector {{.R.Meta.Detector}}, embedder {{.R.Meta.Embedder}}, crop {{.R.Meta.Crop}}; atm-tools {{.R.Meta.Version}}. Distance: {{.R.Meta.Distance}}.</p>
<h2>Contents</h2>
<ul id="toc">{{range .Identities}}
<li><a href="#{{.Folder}}">{{.Folder}}</a> ({{plural .Size "image" "images"}})</li>{{end}}{{if .NoFace}}
<li><a href="#noface">noface</a> ({{len .NoFace}})</li>{{end}}{{if .R.Unreadable}}
<li><a href="#unreadable">unreadable</a> ({{len .R.Unreadable}})</li>{{end}}{{if .R.Skipped}}
<li><a href="#skipped">skipped</a> ({{len .R.Skipped}})</li>{{end}}
</ul>
<div id="tools"><label>Search file names <input id="q" type="search" placeholder="part of a path"></label>
<label>Sort people by <select id="sort"><option value="size">size (largest first)</option><option value="name">name</option><option value="dist">mean distance (tightest first)</option></select></label>
<span id="shown"></span>
<button id="export" type="button">Export corrections</button> <a id="download" class="hidden" download="corrections.json">save corrections.json</a>
<textarea id="corrections" class="hidden" rows="6" cols="80" readonly></textarea></div>
<datalist id="folders">{{range .Folders}}<option value="{{.}}">{{end}}{{range .Singles}}<option value="singletons/{{.}}">{{end}}</datalist>
<div id="people">
{{range .Identities}}<section id="{{.Folder}}" class="person" data-size="{{.Size}}" data-name="{{.Folder}}" data-dist="{{if eq .Size 1}}9{{else}}{{.MeanDistance}}{{end}}">
<h2>{{.Folder}}{{with .Name}} ({{.}}){{end}}: {{plural .Size "image" "images"}}, {{.Masked}} masked, {{.Unmasked}} unmasked{{if and (ne .Folder "singletons") (gt .Size 1)}}, mean distance {{dist .MeanDistance}}{{end}}</h2>
{{with .Maybe}}<p class="maybe">Maybe the same person as: {{range .}}<a href="#{{.Folder}}">{{.Folder}}{{with .Image}} {{.}}{{end}}</a> ({{dist .Distance}}) {{end}}</p>
{{end}}{{if ne .Folder "singletons"}}<p class="edit"><label>Name <input class="name" data-folder="{{.Folder}}" value="{{.Name}}" size="16"></label> <label>Same person as <input class="merge" data-folder="{{.Folder}}" list="folders" size="12" placeholder="person_NNNN" title="a person folder, or singletons/PATH for a person seen once"></label></p>
{{end}}<div class="grid">{{$many := and (ne .Folder "singletons") (gt .Size 1)}}{{range .Faces}}{{$f := .}}
<figure data-path="{{lower .Path}}" data-file="{{.Path}}"{{if .Key}} data-face="{{.Key}}"{{end}}>{{with .Face}}{{if .Thumb}}<a href="{{$f.Href}}"><img src="{{.Thumb}}" alt="" loading="lazy"></a>{{end}}{{end}}<figcaption>{{with .Face}}<span class="b {{.Mask}}">{{.Mask}}</span>{{if $many}} {{dist .Distance}}{{end}}<br>{{end}}<a href="{{.Href}}">{{.Path}}</a>{{if .FaceNo}} (face {{.FaceNo}}){{end}} <a href="{{.Original}}" title="the input file">(original)</a>{{with .Maybe}}<br><span class="maybe">maybe: {{range .}}<a href="#{{.Folder}}">{{.Folder}}{{with .Image}} {{.}}{{end}}</a> {{dist .Distance}} {{end}}</span>{{end}}{{if .Key}}<br><input class="move" data-face="{{.Key}}" list="folders" size="11" placeholder="move to / out" title="a person folder, singletons/PATH (join a person seen once), or out">{{end}}</figcaption></figure>{{end}}
</div>
</section>
{{end}}</div>
{{if .NoFace}}<section id="noface">
<h2>noface: {{plural (len .NoFace) "image" "images"}} without a usable face</h2>
<table><tr><th>path</th><th>why</th></tr>{{range .NoFace}}<tr><td><a href="{{.Href}}">{{.Path}}</a> <a href="{{.Original}}">(original)</a></td><td>{{.Note}}</td></tr>{{end}}</table>
</section>
{{end}}{{if .R.Unreadable}}<section id="unreadable">
<h2>unreadable: {{len .R.Unreadable}}</h2>
<table><tr><th>path</th><th>reason</th></tr>{{range .R.Unreadable}}<tr><td>{{.Path}}</td><td>{{.Reason}}</td></tr>{{end}}</table>
</section>
{{end}}{{if .R.Skipped}}<section id="skipped">
<h2>skipped: {{len .R.Skipped}}</h2>
<table><tr><th>path</th><th>reason</th></tr>{{range .R.Skipped}}<tr><td>{{.Path}}</td><td>{{.Reason}}</td></tr>{{end}}</table>
</section>
{{end}}<script>
(function(){
var people=document.getElementById('people'),q=document.getElementById('q'),sel=document.getElementById('sort'),shown=document.getElementById('shown');
function filter(){
  var t=q.value.trim().toLowerCase(),n=0;
  people.querySelectorAll('section.person').forEach(function(s){
    var any=false;
    s.querySelectorAll('figure').forEach(function(f){var hit=!t||f.dataset.path.indexOf(t)>=0;f.classList.toggle('hidden',!hit);if(hit){any=true;n++;}});
    s.classList.toggle('hidden',!any);
  });
  shown.textContent=t?(n+(n==1?' face matches':' faces match')):'';
}
function sort(){
  var k=sel.value,ss=Array.prototype.slice.call(people.querySelectorAll('section.person'));
  ss.sort(function(a,b){
    if(k=='name')return a.dataset.name<b.dataset.name?-1:a.dataset.name>b.dataset.name?1:0;
    if(k=='dist')return parseFloat(a.dataset.dist)-parseFloat(b.dataset.dist);
    return parseInt(b.dataset.size)-parseInt(a.dataset.size);
  });
  ss.forEach(function(s){people.appendChild(s);});
}
q.addEventListener('input',filter);sel.addEventListener('change',sort);
function keysOf(folder){
  if(folder.indexOf('singletons/')==0){
    // A person seen once: "singletons/PATH" names the faces of that image.
    var p=folder.slice(11),one=document.getElementById('singletons');
    if(!one)return [];
    return Array.prototype.filter.call(one.querySelectorAll('figure[data-face]'),function(f){return f.dataset.file==p;}).map(function(f){return f.dataset.face;});
  }
  var s=document.getElementById(folder);
  if(!s||!s.classList.contains('person')||folder=='singletons')return [];
  return Array.prototype.map.call(s.querySelectorAll('figure[data-face]'),function(f){return f.dataset.face;});
}
document.getElementById('export').addEventListener('click',function(){
  var c={schema:1,merge:[],move:[],name:[]};
  document.querySelectorAll('input.merge').forEach(function(i){
    var to=i.value.trim(),into=keysOf(to);
    if(to&&to!=i.dataset.folder&&into.length)c.merge.push({faces:keysOf(i.dataset.folder),into:into});
  });
  document.querySelectorAll('input.move').forEach(function(i){
    var to=i.value.trim(),f=i.dataset.face;
    if(!to)return;
    if(to=='out'){c.move.push({face:f,to:[]});return;}
    var t=keysOf(to).filter(function(k){return k!=f;});
    if(t.length)c.move.push({face:f,to:t});
  });
  document.querySelectorAll('input.name').forEach(function(i){
    var n=i.value.trim();
    if(n)c.name.push({faces:keysOf(i.dataset.folder),name:n});
  });
  var js=JSON.stringify(c,null,1),ta=document.getElementById('corrections'),dl=document.getElementById('download');
  ta.value=js;ta.classList.remove('hidden');
  dl.href='data:application/json;charset=utf-8,'+encodeURIComponent(js);dl.classList.remove('hidden');
});
})();
</script>
</body>
</html>
`))
