// The console: the depot's images, updated live, and any of them opened in
// h5web's explorer and visualizations; a status panel above.
import React, { useCallback, useEffect, useRef, useState } from 'react';
import { App } from '@h5web/app';
import { H5WasmBufferProvider } from '@h5web/h5wasm';
import { fetchImage, listImages, serverStatus } from './api.js';

// How often the listing and the status are asked again.
const LIST_EVERY_MS = 1000;
const STATUS_EVERY_MS = 2000;
// An image is read whole into the browser's memory to be opened; larger
// ones are listed but not opened.
const MAX_OPEN_BYTES = 1024 * 1024 * 1024;

function humanBytes(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function humanDuration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

// Calls `poll` now and every `everyMs`, one call at a time; stops on
// unmount or when `key` changes.
function usePolling(poll, everyMs, key) {
  useEffect(() => {
    let stopped = false;
    let timer = null;
    const run = async () => {
      await poll();
      if (!stopped) timer = setTimeout(run, everyMs);
    };
    run();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key]);
}

function StatusPanel({ token }) {
  const [status, setStatus] = useState(null);
  const [rates, setRates] = useState({ pushes: 0, fetches: 0 });
  const [error, setError] = useState('');
  const last = useRef(null);
  usePolling(
    async () => {
      try {
        const now = await serverStatus(token);
        const at = performance.now();
        if (last.current) {
          const seconds = (at - last.current.at) / 1000;
          setRates({
            pushes: (now.pushes - last.current.status.pushes) / seconds,
            fetches: (now.fetches - last.current.status.fetches) / seconds,
          });
        }
        last.current = { status: now, at };
        setStatus(now);
        setError('');
      } catch (e) {
        setError(e.message);
      }
    },
    STATUS_EVERY_MS,
    token,
  );
  if (error) return <div className="status error">{error}</div>;
  if (!status) return <div className="status">…</div>;
  const used = status.reserved_bytes / Math.max(1, status.max_memory_bytes);
  return (
    <div className="status" data-testid="status">
      <span title="what counts against --max-memory, of the limit">
        memory {humanBytes(status.reserved_bytes)} of{' '}
        {humanBytes(status.max_memory_bytes)}
        <span className="meter">
          <span style={{ width: `${Math.min(100, used * 100)}%` }} />
        </span>
      </span>
      <span data-testid="image-count">{status.images} images</span>
      <span>{rates.pushes.toFixed(1)} pushes/s</span>
      <span>{rates.fetches.toFixed(1)} fetches/s</span>
    </div>
  );
}

function ImageList({ token, prefix, selected, onOpen }) {
  const [images, setImages] = useState([]);
  const [error, setError] = useState('');
  const [now, setNow] = useState(Date.now());
  usePolling(
    async () => {
      try {
        setImages(await listImages(prefix, token));
        setNow(Date.now());
        setError('');
      } catch (e) {
        setError(e.message);
      }
    },
    LIST_EVERY_MS,
    `${token}\n${prefix}`,
  );
  return (
    <div className="images">
      {error && <div className="error">{error}</div>}
      <table>
        <thead>
          <tr>
            <th>image</th>
            <th>size</th>
            <th>generation</th>
            <th>age</th>
            <th>expires in</th>
          </tr>
        </thead>
        <tbody>
          {images.map((image) => (
            <tr
              key={image.id}
              data-image-id={image.id}
              className={selected && selected.id === image.id ? 'selected' : ''}
              onClick={() => onOpen(image)}
            >
              <td className="id">{image.id}</td>
              <td>{humanBytes(image.size)}</td>
              <td>{image.generation}</td>
              <td>{humanDuration(now - Date.parse(image.created))}</td>
              <td>
                {image.expires
                  ? humanDuration(Date.parse(image.expires) - now)
                  : 'never'}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {images.length === 0 && !error && (
        <div className="empty">no image{prefix ? ` under '${prefix}'` : ''}</div>
      )}
    </div>
  );
}

function Viewer({ token, image }) {
  const [opened, setOpened] = useState(null); // { key, buffer }
  const [error, setError] = useState('');
  useEffect(() => {
    if (!image) return undefined;
    let cancelled = false;
    setOpened(null);
    setError('');
    if (image.size > MAX_OPEN_BYTES) {
      setError(
        `${image.id} is ${humanBytes(image.size)}: too large to open in the ` +
          'browser (read it with h5py and driver="ros3" instead)',
      );
      return undefined;
    }
    // The generation listed, pinned: a push meanwhile does not change what
    // is opened.
    fetchImage(image.id, image.generation, token)
      .then((buffer) => {
        if (!cancelled) {
          setOpened({ key: `${image.id}@${image.generation}`, buffer });
        }
      })
      .catch((e) => !cancelled && setError(e.message));
    return () => {
      cancelled = true;
    };
  }, [image, token]);
  if (!image) {
    return <div className="viewer empty">select an image to open it</div>;
  }
  if (error) return <div className="viewer error">{error}</div>;
  if (!opened) return <div className="viewer empty">opening {image.id}…</div>;
  return (
    <div className="viewer" data-testid="viewer">
      <H5WasmBufferProvider
        key={opened.key}
        filename={image.id}
        buffer={opened.buffer}
      >
        <App />
      </H5WasmBufferProvider>
    </div>
  );
}

export default function Console() {
  const [token, setToken] = useState(
    () => window.localStorage.getItem('h5depot.token') || '',
  );
  const [prefix, setPrefix] = useState('');
  const [selected, setSelected] = useState(null);
  const saveToken = useCallback((value) => {
    setToken(value);
    window.localStorage.setItem('h5depot.token', value);
  }, []);
  return (
    <div className="console">
      <header>
        <strong>h5depot</strong>
        <StatusPanel token={token} />
        <input
          type="password"
          placeholder="token (if the server asks for one)"
          value={token}
          onChange={(e) => saveToken(e.target.value.trim())}
        />
      </header>
      <main>
        <aside>
          <input
            placeholder="filter by id prefix"
            value={prefix}
            onChange={(e) => setPrefix(e.target.value)}
          />
          <ImageList
            token={token}
            prefix={prefix}
            selected={selected}
            onOpen={setSelected}
          />
        </aside>
        <Viewer token={token} image={selected} />
      </main>
    </div>
  );
}
