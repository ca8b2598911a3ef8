// SPDX-License-Identifier: GPL-2.0
/*
 * ivshmem_db: a minimal driver for ivshmem-doorbell (1af4:1110 with MSI-X)
 * so Linux user space can wait for doorbells. Linux has no ivshmem driver,
 * uio_pci_generic only does INTx (the doorbell device has MSI-X only) and
 * Debian's cloud kernel has no VFIO no-IOMMU mode.
 *
 * One misc device per function, /dev/ivshmem-db<N>:
 *   pread(fd, &count, 8, vector * 8)  blocks until vector has rung at least
 *                                     once since the last read, returns the
 *                                     number of rings (u64) and resets it;
 *                                     O_NONBLOCK: -EAGAIN when none.
 *   poll()                            readable when any vector has rung.
 *   pwrite(fd, &peer_vector, 4, 0)    rings: writes (peer << 16) | vector to
 *                                     the Doorbell register.
 *   pread(fd, &info, 8, 512)          { u32 ivposition, u32 vectors }, at once
 *                                     (also ioctl(IVSHMEM_DB_INFO)).
 * BAR0 is 256 bytes, less than a page, so sysfs resource0 cannot be mapped:
 * rings and IVPosition go through this driver.
 * The shared memory stays reachable through sysfs resource2 (ivshmem-tool).
 * ivshmem-plain (no MSI-X capability) is left alone.
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/miscdevice.h>
#include <linux/interrupt.h>
#include <linux/wait.h>
#include <linux/poll.h>
#include <linux/uaccess.h>
#include <linux/atomic.h>
#include <linux/idr.h>

#define IVSHMEM_DB_MAX_VECTORS 64
#define REG_IVPOSITION 8
#define REG_DOORBELL 12
#define IVSHMEM_DB_INFO_OFF (IVSHMEM_DB_MAX_VECTORS * 8)

struct ivshmem_db_info {
	__u32 ivposition;
	__u32 vectors;
};
#define IVSHMEM_DB_INFO _IOR('i', 1, struct ivshmem_db_info)

struct ivshmem_db;

/* The IRQ handler's context: which vector of which device. */
struct ivshmem_db_vec {
	struct ivshmem_db *db;
	int index;
};

struct ivshmem_db {
	struct pci_dev *pdev;
	struct ivshmem_db_vec vec[IVSHMEM_DB_MAX_VECTORS];
	void __iomem *regs;
	int nvec;
	atomic64_t count[IVSHMEM_DB_MAX_VECTORS];
	wait_queue_head_t wq;
	struct miscdevice misc;
	char name[24];
	int index;
};

static DEFINE_IDA(ivshmem_db_ida);

static irqreturn_t ivshmem_db_irq(int irq, void *arg)
{
	struct ivshmem_db_vec *v = arg;

	atomic64_inc(&v->db->count[v->index]);
	wake_up_interruptible(&v->db->wq);
	return IRQ_HANDLED;
}

static struct ivshmem_db *file_db(struct file *f)
{
	return container_of(f->private_data, struct ivshmem_db, misc);
}

static bool any_rung(struct ivshmem_db *db)
{
	int i;

	for (i = 0; i < db->nvec; i++)
		if (atomic64_read(&db->count[i]))
			return true;
	return false;
}

static ssize_t ivshmem_db_read(struct file *f, char __user *buf, size_t len, loff_t *pos)
{
	struct ivshmem_db *db = file_db(f);
	loff_t vector = *pos / 8;
	u64 n;
	int ret;

	if (*pos == IVSHMEM_DB_INFO_OFF && len >= 8) {
		u32 info[2] = { readl(db->regs + REG_IVPOSITION), db->nvec };

		if (copy_to_user(buf, info, 8))
			return -EFAULT;
		return 8;
	}
	if (len < 8 || *pos % 8 || vector >= db->nvec)
		return -EINVAL;
	for (;;) {
		n = atomic64_xchg(&db->count[vector], 0);
		if (n)
			break;
		if (f->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible(db->wq, atomic64_read(&db->count[vector]) != 0);
		if (ret)
			return ret;
	}
	if (copy_to_user(buf, &n, 8))
		return -EFAULT;
	return 8;
}

static ssize_t ivshmem_db_write(struct file *f, const char __user *buf, size_t len, loff_t *pos)
{
	struct ivshmem_db *db = file_db(f);
	u32 v;

	if (len != 4)
		return -EINVAL;
	if (copy_from_user(&v, buf, 4))
		return -EFAULT;
	writel(v, db->regs + REG_DOORBELL);
	return 4;
}

static __poll_t ivshmem_db_poll(struct file *f, poll_table *wait)
{
	struct ivshmem_db *db = file_db(f);

	poll_wait(f, &db->wq, wait);
	return any_rung(db) ? (EPOLLIN | EPOLLRDNORM) : 0;
}

static long ivshmem_db_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct ivshmem_db *db = file_db(f);
	struct ivshmem_db_info info;

	if (cmd != IVSHMEM_DB_INFO)
		return -ENOTTY;
	info.ivposition = readl(db->regs + REG_IVPOSITION);
	info.vectors = db->nvec;
	if (copy_to_user((void __user *)arg, &info, sizeof(info)))
		return -EFAULT;
	return 0;
}

static const struct file_operations ivshmem_db_fops = {
	.owner = THIS_MODULE,
	.read = ivshmem_db_read,
	.write = ivshmem_db_write,
	.poll = ivshmem_db_poll,
	.unlocked_ioctl = ivshmem_db_ioctl,
	.llseek = default_llseek,
};

static int ivshmem_db_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct ivshmem_db *db;
	int ret, i, want;

	if (!pdev->msix_cap)
		return -ENODEV; /* ivshmem-plain: nothing to drive */
	db = devm_kzalloc(&pdev->dev, sizeof(*db), GFP_KERNEL);
	if (!db)
		return -ENOMEM;
	db->pdev = pdev;
	init_waitqueue_head(&db->wq);
	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	ret = pcim_iomap_regions(pdev, BIT(0), "ivshmem_db");
	if (ret)
		return ret;
	db->regs = pcim_iomap_table(pdev)[0];
	pci_set_master(pdev);
	want = min(pci_msix_vec_count(pdev), IVSHMEM_DB_MAX_VECTORS);
	if (want <= 0)
		return -ENODEV;
	ret = pci_alloc_irq_vectors(pdev, want, want, PCI_IRQ_MSIX);
	if (ret < 0)
		return ret;
	db->nvec = ret;
	for (i = 0; i < db->nvec; i++) {
		db->vec[i].db = db;
		db->vec[i].index = i;
		ret = devm_request_irq(&pdev->dev, pci_irq_vector(pdev, i), ivshmem_db_irq, 0,
				       "ivshmem_db", &db->vec[i]);
		if (ret)
			goto free_vectors;
	}
	db->index = ida_alloc(&ivshmem_db_ida, GFP_KERNEL);
	if (db->index < 0) {
		ret = db->index;
		goto free_vectors;
	}
	snprintf(db->name, sizeof(db->name), "ivshmem-db%d", db->index);
	db->misc.minor = MISC_DYNAMIC_MINOR;
	db->misc.name = db->name;
	db->misc.fops = &ivshmem_db_fops;
	db->misc.mode = 0600;
	db->misc.parent = &pdev->dev; /* /sys/bus/pci/devices/<bdf>/misc/ivshmem-dbN */
	ret = misc_register(&db->misc);
	if (ret)
		goto free_ida;
	pci_set_drvdata(pdev, db);
	dev_info(&pdev->dev, "%s: peer %u, %d vectors\n", db->name,
		 readl(db->regs + REG_IVPOSITION), db->nvec);
	return 0;
free_ida:
	ida_free(&ivshmem_db_ida, db->index);
	i = db->nvec;
free_vectors:
	while (--i >= 0)
		devm_free_irq(&pdev->dev, pci_irq_vector(pdev, i), &db->vec[i]);
	pci_free_irq_vectors(pdev);
	return ret;
}

static void ivshmem_db_remove(struct pci_dev *pdev)
{
	struct ivshmem_db *db = pci_get_drvdata(pdev);
	int i;

	misc_deregister(&db->misc);
	ida_free(&ivshmem_db_ida, db->index);
	for (i = 0; i < db->nvec; i++)
		devm_free_irq(&pdev->dev, pci_irq_vector(pdev, i), &db->vec[i]);
	pci_free_irq_vectors(pdev);
}

static const struct pci_device_id ivshmem_db_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, ivshmem_db_ids);

static struct pci_driver ivshmem_db_driver = {
	.name = "ivshmem_db",
	.id_table = ivshmem_db_ids,
	.probe = ivshmem_db_probe,
	.remove = ivshmem_db_remove,
};
module_pci_driver(ivshmem_db_driver);

MODULE_DESCRIPTION("ivshmem-doorbell: MSI-X doorbells for user space");
MODULE_LICENSE("GPL");
