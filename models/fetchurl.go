package models

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"time"
)

// urlFetchTimeout bounds one URL download when FetchOptions.HTTP is nil.
const urlFetchTimeout = 2 * time.Minute

// cachedURLFile is where a URL file is kept in the cache: named by its
// sha256, so a file is reused only when its content is the locked one.
func cachedURLFile(cacheDir string, f LockFile) string {
	return filepath.Join(cacheDir, "sha256-"+f.SHA256+"-"+path.Base(f.Path))
}

// fetchURL makes every file of a URL package present and verified in
// SrcDir, taking each from the first place that has the locked bytes: the
// cache, a mirror directory, then its URL. A file found with other bytes is
// refused (logged) and the next place is tried. The error names every place
// tried when none had the file.
func fetchURL(ctx context.Context, p LockPackage, o FetchOptions, logf func(string, ...any)) error {
	for _, f := range p.Files {
		dst := filepath.Join(o.SrcDir, p.Dir, filepath.FromSlash(f.Path))
		if CheckFile(dst, f.Size, f.SHA256) == nil {
			continue
		}
		cached := cachedURLFile(o.CacheDir, f)
		if CheckFile(cached, f.Size, f.SHA256) != nil {
			if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
				return fmt.Errorf("create cache dir: %w", err)
			}
			if err := urlIntoCache(ctx, p, f, cached, o, logf); err != nil {
				return err
			}
		} else {
			logf("%s@%s: %s: using cached %s", p.Name, p.Version, f.Path, cached)
		}
		if err := copyVerified(cached, dst, f); err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
	}
	logf("%s@%s: %d files present and verified", p.Name, p.Version, len(p.Files))
	return nil
}

// urlIntoCache puts the locked bytes of f into the cache from a mirror or
// from its URL.
func urlIntoCache(ctx context.Context, p LockPackage, f LockFile, cached string, o FetchOptions, logf func(string, ...any)) error {
	var tried []error
	base := path.Base(f.Path)
	for _, m := range o.Mirrors {
		for _, cand := range []string{filepath.Join(m, base), filepath.Join(m, p.Dir, base)} {
			err := CheckFile(cand, f.Size, f.SHA256)
			if err == nil {
				if err := copyVerified(cand, cached, f); err != nil {
					return fmt.Errorf("%s: copy from mirror: %w", f.Path, err)
				}
				logf("%s@%s: %s: copied from mirror %s (sha256 verified)", p.Name, p.Version, f.Path, cand)
				return nil
			}
			if errors.Is(err, ErrIntegrity) {
				// Never trust a mirror's bytes unverified.
				logf("%s@%s: %s: REFUSED mirror file: %v", p.Name, p.Version, f.Path, err)
				tried = append(tried, fmt.Errorf("mirror %s refused: %w", cand, err))
			}
		}
	}
	if len(o.Mirrors) > 0 && len(tried) == 0 {
		tried = append(tried, fmt.Errorf("no %s in mirrors %v", base, o.Mirrors))
	}
	logf("%s@%s: %s: downloading %s", p.Name, p.Version, f.Path, f.URL)
	err := download(ctx, o.HTTP, f, cached)
	if err == nil {
		return nil
	}
	tried = append(tried, err)
	return fmt.Errorf("%s: %w", f.Path, errors.Join(tried...))
}

// download GETs f.URL into file, reading at most one byte more than the
// locked size and keeping the file only when its sha256 and size match.
func download(ctx context.Context, client *http.Client, f LockFile, file string) error {
	if client == nil {
		// A machine without network fails fast: bounded dial, TLS and
		// header waits inside the overall limit.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DialContext = (&net.Dialer{Timeout: 15 * time.Second}).DialContext
		tr.TLSHandshakeTimeout = 15 * time.Second
		tr.ResponseHeaderTimeout = 30 * time.Second
		client = &http.Client{Timeout: urlFetchTimeout, Transport: tr}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	if err != nil {
		return fmt.Errorf("download %s: %w", f.URL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("download %s: HTTP %s", f.URL, resp.Status)
	}
	if err := writeVerified(file, io.LimitReader(resp.Body, f.Size+1), f); err != nil {
		return fmt.Errorf("download %s: %w", f.URL, err)
	}
	return nil
}

// copyVerified copies src to dst atomically, checking the bytes copied.
func copyVerified(src, dst string, f LockFile) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeVerified(dst, io.LimitReader(in, f.Size+1), f)
}
