// The gateway's API (docs/HTTP.md), as the console calls it: every call
// carries the token the user gave, if any, as a bearer token.

// The gateway's origin and path prefix: the console is served from its
// root, so the API is beside it.
const base = new URL('./', window.location.href);

function headers(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// Throws an Error with the gateway's message for a refused call.
async function check(response) {
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body.error) message = `${body.error.code}: ${body.error.message}`;
  } catch {
    // not JSON: the status line says enough
  }
  const error = new Error(message);
  error.status = response.status;
  throw error;
}

// Every image whose id starts with `prefix` that the caller may see, all
// pages of the listing.
export async function listImages(prefix, token) {
  const images = [];
  let pageToken = '';
  do {
    const url = new URL('v1/images', base);
    url.searchParams.set('prefix', prefix);
    url.searchParams.set('page_size', '1000');
    if (pageToken) url.searchParams.set('page_token', pageToken);
    const response = await check(await fetch(url, { headers: headers(token) }));
    const page = await response.json();
    images.push(...page.images);
    pageToken = page.next_page_token;
  } while (pageToken && images.length < 100000);
  return images;
}

export async function serverStatus(token) {
  const response = await check(
    await fetch(new URL('v1/status', base), { headers: headers(token) }),
  );
  return response.json();
}

// The bytes of one generation of an image, and the generation.
export async function fetchImage(id, generation, token) {
  const url = new URL(`v1/images/${id.split('/').map(encodeURIComponent).join('/')}`, base);
  if (generation) url.searchParams.set('generation', String(generation));
  const response = await check(await fetch(url, { headers: headers(token) }));
  return response.arrayBuffer();
}
